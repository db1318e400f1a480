/**
 * Ordinary programs for the zero-false-positive tests: bash, python3 (Debian's and the one on PATH,
 * and one with a ctypes callback), node with JIT-compiled code, sqlite3, a multi-threaded C program
 * and a PostgreSQL server from Debian's packages (postmaster and its worker processes).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTarget, type Target } from '../helpers/native.js';
import { buildFixtures } from './helpers.js';

const run = promisify(execFile);
const PG_BIN = '/usr/lib/postgresql/15/bin';

export interface OrdinaryPrograms {
  targets: Target[];
  /** The PostgreSQL postmaster, or undefined with the reason in `pgSkipReason`. */
  pg: { proc: ChildProcess; dir: string } | undefined;
  pgSkipReason: string | undefined;
  /** Stops PostgreSQL (the other targets die with killTargetsAfterAll). */
  stop(): Promise<void>;
}

/** Pids of the direct children of `pid`. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(n));
    } catch {
      // exited
    }
  }
  return out;
}

async function startPostgres(into: OrdinaryPrograms): Promise<void> {
  if (!existsSync(join(PG_BIN, 'postgres'))) {
    into.pgSkipReason = 'PostgreSQL is not installed (CI: apt-get install postgresql)';
    return;
  }
  let uid: number;
  let gid: number;
  try {
    const { stdout } = await run('id', ['-u', 'postgres']);
    uid = Number(stdout.trim());
    gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  } catch {
    into.pgSkipReason = 'no postgres user';
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'guard-pg-'));
  chownSync(dir, uid, gid);
  const data = join(dir, 'data');
  await run(join(PG_BIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'], { uid, gid, cwd: dir });
  const proc = spawn(join(PG_BIN, 'postgres'), ['-D', data, '-k', dir, '-p', String(20000 + (process.pid % 10000)), '-c', 'listen_addresses='], { uid, gid, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  into.pg = { proc, dir };
  let log = '';
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`postgres did not start: ${log}`)), 30_000);
    const onData = (d: Buffer) => {
      log += d.toString();
      if (log.includes('ready to accept connections')) {
        clearTimeout(timer);
        res();
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (c) => rej(new Error(`postgres exited (${c}): ${log}`)));
  });
  // Let the workers (checkpointer, walwriter, autovacuum launcher, ...) start.
  for (let i = 0; i < 50 && childrenOf(proc.pid!).length < 4; i++) await new Promise((r) => setTimeout(r, 100));
}

/** Starts the ordinary programs; call killTargetsAfterAll() in the test file and `stop()` after. */
export async function startOrdinaryPrograms(): Promise<OrdinaryPrograms> {
  const fx = await buildFixtures();
  const nodeScript = [
    'let s = 0; const f = (x) => x * 2 + 1;',
    'const t = Date.now(); while (Date.now() - t < 300) for (let i = 0; i < 1e5; i++) s = (s + f(i)) | 0;',
    'console.log("ready", s); process.stdin.resume();',
  ].join('\n');
  const starts: Promise<Target>[] = [
    startTarget('/usr/bin/bash', ['-c', 'echo ready; read line']),
    startTarget('/usr/bin/python3', ['-c', 'import sys, json, hashlib; print("ready", flush=True); sys.stdin.read()']),
    startTarget('/usr/bin/node', ['-e', nodeScript]),
    startTarget(fx.mt),
    // ctypes callbacks are libffi closures: executable anonymous memory owned by a recognised runtime.
    startTarget('/usr/bin/python3', ['-c', 'import ctypes, sys; cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1); print("ready", cb(1), flush=True); sys.stdin.read()']),
  ];
  const py = await run('bash', ['-c', 'command -v python3']).then((r) => r.stdout.trim()).catch(() => '');
  if (py !== '' && py !== '/usr/bin/python3') starts.push(startTarget(py, ['-c', 'import sys; print("ready", flush=True); sys.stdin.read()']));
  if (existsSync('/usr/bin/sqlite3')) starts.push(startTarget('/usr/bin/sqlite3', ['-cmd', '.print ready', ':memory:']));
  const programs: OrdinaryPrograms = {
    targets: await Promise.all(starts),
    pg: undefined,
    pgSkipReason: undefined,
    async stop() {
      const pg = programs.pg;
      if (pg === undefined) return;
      pg.proc.kill('SIGQUIT');
      await new Promise((r) => (pg.proc.exitCode !== null ? r(undefined) : pg.proc.once('exit', r)));
      rmSync(pg.dir, { recursive: true, force: true });
    },
  };
  await startPostgres(programs);
  return programs;
}
