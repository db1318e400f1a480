/**
 * Zero false positives: ordinary programs started by the test — bash, python3 (Debian's and the
 * one on PATH, and one with a ctypes callback), node with JIT-compiled code, sqlite3, a multi-threaded C program and a PostgreSQL
 * server from Debian's packages (postmaster and its worker processes) — verify clean in every
 * structure, with the default policy. Info findings count too.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VerifierCaches, verifyProcesses } from '../../src/guard/index.js';
import { killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { buildFixtures, summary, type Fixtures } from './helpers.js';

const run = promisify(execFile);
killTargetsAfterAll();

const PG_BIN = '/usr/lib/postgresql/15/bin';
let fx: Fixtures;
const targets: Target[] = [];
let pg: { proc: ChildProcess; dir: string } | undefined;
let pgSkipReason: string | undefined;

function childrenOf(pid: number): number[] {
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

async function startPostgres(): Promise<void> {
  if (!existsSync(join(PG_BIN, 'postgres'))) {
    pgSkipReason = 'PostgreSQL is not installed (CI: apt-get install postgresql)';
    return;
  }
  let uid: number;
  let gid: number;
  try {
    const { stdout } = await run('id', ['-u', 'postgres']);
    uid = Number(stdout.trim());
    gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  } catch {
    pgSkipReason = 'no postgres user';
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'guard-pg-'));
  chownSync(dir, uid, gid);
  const data = join(dir, 'data');
  await run(join(PG_BIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'], { uid, gid, cwd: dir });
  const proc = spawn(join(PG_BIN, 'postgres'), ['-D', data, '-k', dir, '-p', String(20000 + (process.pid % 10000)), '-c', 'listen_addresses='], { uid, gid, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  pg = { proc, dir };
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

beforeAll(async () => {
  fx = await buildFixtures();
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
  targets.push(...(await Promise.all(starts)));
  await startPostgres();
});

afterAll(async () => {
  if (pg !== undefined) {
    pg.proc.kill('SIGQUIT');
    await new Promise((r) => (pg!.proc.exitCode !== null ? r(undefined) : pg!.proc.once('exit', r)));
    rmSync(pg.dir, { recursive: true, force: true });
  }
});

describe('verify: zero false positives on ordinary programs', () => {
  it('finds nothing in bash, python3, node, sqlite3 and a multi-threaded C program', { timeout: 300_000 }, async () => {
    const pids = targets.map((t) => t.pid);
    const results = await verifyProcesses(pids, { caches: new VerifierCaches() });
    for (const r of results) expect(r.checked, `${r.pid}: ${r.error}`).toBe(true);
    const findings = results.flatMap((r) => r.findings);
    expect(findings, summary(findings)).toEqual([]);
    // Every structure was really looked at: code bytes were compared.
    for (const r of results) expect(r.bytes).toBeGreaterThan(100_000);
  });

  it('finds nothing in a PostgreSQL server and its workers', { timeout: 300_000 }, async (ctx) => {
    if (pg === undefined) {
      process.stderr.write(`skipping PostgreSQL: ${pgSkipReason}\n`);
      ctx.skip();
      return;
    }
    const pids = [pg.proc.pid!, ...childrenOf(pg.proc.pid!)];
    expect(pids.length).toBeGreaterThanOrEqual(4);
    const results = await verifyProcesses(pids, { caches: new VerifierCaches() });
    const findings = results.flatMap((r) => r.findings);
    expect(results.filter((r) => r.checked).length).toBeGreaterThanOrEqual(4);
    expect(findings, summary(findings)).toEqual([]);
  });
});
