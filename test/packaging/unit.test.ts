/**
 * deploy/hotpatch-guard.service as shipped: its ExecStart= runs (with the example policy the
 * package installs where the unit expects it) under exactly the unit's capability bounding set,
 * and every capability it keeps is needed — checked against a process of another user that
 * catches a signal (so structure 7 freezes it) with `setpriv --bounding-set`.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const UNIT = readFileSync(join(REPO_ROOT, 'deploy/hotpatch-guard.service'), 'utf8');
const setpriv = (() => {
  try {
    execFileSync('setpriv', ['--version'], { stdio: 'ignore' });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
})();

function unitValue(key: string): string {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(UNIT);
  if (!m) throw new Error(`no ${key}= in the unit`);
  return m[1]!;
}

/** CAP_SYS_PTRACE → sys_ptrace (setpriv's spelling). */
const CAPS = unitValue('CapabilityBoundingSet').split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase());
let dir = '';
let target: ChildProcess;

beforeAll(() => {
  if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-unit-'));
  // Another user's process that catches SIGUSR1: structure 7 must freeze it to read its handlers.
  target = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/bin/bash', '-c', 'trap "echo usr1" USR1; while :; do sleep 1; done'], { stdio: 'ignore' });
}, 120_000);

afterAll(() => {
  target?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function verifyWith(caps: string[]): Promise<{ code: number; findings: Array<{ code: number; kind: string; detail: string }>; bytes: number; stderr: string }> {
  const r = await run('setpriv', ['--inh-caps=-all', `--bounding-set=-all${caps.map((c) => `,+${c}`).join('')}`, '--', 'node', CLI, 'verify', '--pid', String(target.pid), '--json', '--state-dir', join(dir, 'vstate')]).then(
    (x) => ({ code: 0, stdout: x.stdout, stderr: x.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
  const doc = JSON.parse(r.stdout) as { checked: { bytes: number }; findings: Array<{ code: number; kind: string; detail: string }> };
  return { code: r.code, findings: doc.findings, bytes: doc.checked.bytes, stderr: r.stderr };
}

describe('the guard unit', () => {
  it('keeps the capabilities docs/guard.md names, and no CAP_SYS_ADMIN', () => {
    expect(CAPS.sort()).toEqual(['checkpoint_restore', 'dac_override', 'kill', 'sys_nice', 'sys_ptrace']);
    expect(unitValue('AmbientCapabilities')).toBe(unitValue('CapabilityBoundingSet'));
    expect(unitValue('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
  });

  it.skipIf(!setpriv)("with the unit's capabilities, another user's signal-catching process verifies clean (structure 7 included)", async () => {
    await new Promise((r) => setTimeout(r, 300)); // bash installed its trap
    const r = await verifyWith(CAPS);
    expect(r.findings, r.stderr).toEqual([]);
    expect(r.code).toBe(0);
    expect(r.bytes).toBeGreaterThan(0);
  }, 120_000);

  it.skipIf(!setpriv)('each kept capability is needed: sys_ptrace (memory), dac_override (the freeze writes /proc/PID/mem), checkpoint_restore (map_files), kill', async () => {
    const without = (c: string) => CAPS.filter((x) => x !== c);
    const noPtrace = await verifyWith(without('sys_ptrace'));
    expect(noPtrace.code).not.toBe(0);
    expect(noPtrace.bytes).toBe(0);
    const noDac = await verifyWith(without('dac_override'));
    // Without it: /proc/PID/mem of another user cannot be opened (read, or for the freeze's writes).
    expect(noDac.code !== 0 || noDac.findings.some((f) => f.kind === 'unverifiable'), JSON.stringify(noDac)).toBe(true);
    const mapFile = `/proc/${target.pid}/map_files/${execFileSync('ls', [`/proc/${target.pid}/map_files`], { encoding: 'utf8' }).split('\n')[0]}`;
    const head = (caps: string[]) => run('setpriv', ['--inh-caps=-all', `--bounding-set=-all${caps.map((c) => `,+${c}`).join('')}`, '--', 'head', '-c', '4', mapFile]).then(() => true, () => false);
    expect(await head(CAPS)).toBe(true);
    expect(await head(without('checkpoint_restore'))).toBe(false);
    const kill0 = (caps: string[]) => run('setpriv', ['--inh-caps=-all', `--bounding-set=-all${caps.map((c) => `,+${c}`).join('')}`, '--', 'kill', '-0', String(target.pid)]).then(() => true, () => false);
    expect(await kill0(CAPS)).toBe(true);
    expect(await kill0(without('kill'))).toBe(false);
  }, 180_000);

  it.skipIf(!setpriv)('ExecStart= runs as shipped (example policy, state, JSON log, metrics) under the bounding set', async () => {
    const argv = unitValue('ExecStart').split(/\s+/);
    expect(argv[0]).toBe('/usr/bin/hotpatch');
    const port = 20000 + (process.pid % 20000);
    const paths: Record<string, string> = {
      '/etc/hotpatch/guard.json': join(REPO_ROOT, 'deploy/guard.example.json'),
      '/var/lib/hotpatch/guard': join(dir, 'state'),
      '/var/log/hotpatch/guard.jsonl': join(dir, 'guard.jsonl'),
      '9464': String(port),
    };
    const args = argv.slice(1).map((a) => paths[a] ?? a);
    const child = spawn('setpriv', ['--inh-caps=-all', `--bounding-set=-all${CAPS.map((c) => `,+${c}`).join('')}`, '--', 'node', CLI, ...args, '--duration', '60'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    try {
      const deadline = Date.now() + 90_000;
      const log = join(dir, 'guard.jsonl');
      while (!(existsSync(log) && readFileSync(log, 'utf8').includes('"type":"cycle"'))) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no cycle; exit ${child.exitCode}; stderr: ${err}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const body = await new Promise<string>((res, rej) => {
        request({ host: '127.0.0.1', port, path: '/metrics' }, (r) => {
          let s = '';
          r.on('data', (d: Buffer) => (s += d.toString()));
          r.on('end', () => res(s));
        }).on('error', rej).end();
      });
      expect(body).toMatch(/^hotpatch_watched_processes [1-9]\d*$/m);
      expect(child.exitCode).toBeNull();
    } finally {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
    }
    expect(child.exitCode, err).toBe(0);
  }, 180_000);
});
