/**
 * Issue #13 item 4: no user mistake is an "internal error" or a stack trace, and `--json` always
 * prints one JSON document, errors included.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { CLI, runCli, type CliRun } from '../helpers/cli.js';

const run = promisify(execFile);

function noTrace(r: CliRun): void {
  expect(r.stderr).not.toMatch(/internal error|\n\s+at \S+ \(|node:internal/);
}

let dir: string;
let oldExe: string;
let newExe: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-messages-'));
  writeFileSync(join(dir, 'a.c'), 'int f(int x) { return x + 1; }\nint main(void) { return f(1); }\n');
  writeFileSync(join(dir, 'b.c'), 'int f(int x) { return x + 2; }\nint main(void) { return f(1); }\n');
  oldExe = join(dir, 'a');
  newExe = join(dir, 'b');
  await run('gcc', ['-O2', '-fpatchable-function-entry=7,5', '-o', oldExe, join(dir, 'a.c')]);
  await run('gcc', ['-O2', '-fpatchable-function-entry=7,5', '-o', newExe, join(dir, 'b.c')]);
}, 120_000);

describe('CLI messages for user mistakes', () => {
  it('an -o path in a directory that does not exist is a clear error (build, keygen), one JSON document with --json', async () => {
    const b = await runCli(['build', '--old', oldExe, '--new', newExe, '-o', join(dir, 'no', 'such', 'x.hpk')]);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/cannot write output file .*no\/such\/x\.hpk: its directory does not exist.*\[OUTPUT_UNWRITABLE\]/);
    noTrace(b);
    const k = await runCli(['keygen', '-o', join(dir, 'no', 'k')]);
    expect(k.code).toBe(1);
    expect(k.stderr).toMatch(/OUTPUT_UNWRITABLE/);
    noTrace(k);
    const j = await runCli(['build', '--old', oldExe, '--new', newExe, '-o', join(dir, 'no', 'x.hpk'), '--json']);
    expect(JSON.parse(j.stdout)).toMatchObject({ error: { code: 'OUTPUT_UNWRITABLE' } });
  });

  it('--json prints one JSON error document for usage errors and unknown processes', async () => {
    for (const args of [['verify', '--pid', 'abc', '--json'], ['list', '--pid', '999999999', '--json'], ['verify', '--bogus', '--json']]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).not.toBe(0);
      const doc = JSON.parse(r.stdout) as { error?: { code: string; message: string } };
      expect(doc.error?.code, args.join(' ')).toMatch(/^[A-Z_]+$/);
      noTrace(r);
    }
  });

  it('a pid that does not exist says "no such process", not "run the same command again"', async () => {
    const pkg = join(dir, 'f.hpk');
    expect((await runCli(['build', '--old', oldExe, '--new', newExe, '-o', pkg])).code).toBe(0);
    for (const args of [['apply', pkg, '--pid', '999999999', '--allow-unsigned'], ['recover', '--pid', '999999999']]) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/no such process: 999999999/);
      expect(r.stderr, args.join(' ')).not.toMatch(/run the same command again|recover` again/);
      noTrace(r);
    }
  });

  it('a --metrics port in use is a usage error naming the port', async () => {
    const server: Server = createServer();
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
    const port = (server.address() as { port: number }).port;
    try {
      const r = await runCli(['guard', '--pid', String(process.pid), '--metrics', String(port), '--duration', '1', '--no-ptrace']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`--metrics ${port}: the port is already in use.*\\[USAGE_PORT_IN_USE\\]`));
      noTrace(r);
    } finally {
      server.close();
    }
  });

  it('output piped into a reader that stops early (head) ends quietly', async () => {
    // Exactly what a user's shell does: `hotpatch scan --pid PID --functions | head -1` (the node of this test maps enough functions to fill the pipe).
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn('bash', ['-c', `node ${JSON.stringify(CLI)} scan --pid ${process.pid} --functions | head -1 >/dev/null; exit \${PIPESTATUS[0]}`], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      c.on('exit', (code) => resolve({ code, stderr }));
    });
    expect(r.stderr).not.toMatch(/EPIPE|Unhandled|\n\s+at /);
    expect([0, 4]).toContain(r.code); // 4: a module of the process could not be read
  }, 120_000);

  it('verify shows live progress on a terminal only (not when stderr is a pipe, not with --json)', async () => {
    const args = `verify --pid ${process.pid} --no-ptrace`;
    const onTty = await run('script', ['-qec', `node ${JSON.stringify(CLI)} ${args}`, '/dev/null'], { timeout: 120_000 }).catch((e: { stdout: string }) => e);
    expect((onTty as { stdout: string }).stdout).toMatch(/hotpatch verify: 1\/1 processes, [\d.]+ MB compared/);
    const piped = await runCli(args.split(' '));
    expect(piped.stderr).not.toMatch(/processes, [\d.]+ MB compared/);
    const json = await run('script', ['-qec', `node ${JSON.stringify(CLI)} ${args} --json`, '/dev/null'], { timeout: 120_000 }).catch((e: { stdout: string }) => e);
    expect((json as { stdout: string }).stdout).not.toMatch(/MB compared/);
  }, 120_000);

  it('guard shows the progress of its first cycle on a terminal, then only its log lines', async () => {
    // A small target and short cycles, so that several cycles run within --duration.
    const target = spawn('sleep', ['300'], { stdio: 'ignore' });
    const args = `guard --pid ${target.pid} --interval 0.3 --duration 8 --no-ptrace`;
    let out: string;
    try {
      const onTty = await run('script', ['-qec', `node ${JSON.stringify(CLI)} ${args} >/dev/null`, '/dev/null'], { timeout: 120_000 }).catch((e: { stdout: string }) => e);
      out = (onTty as { stdout: string }).stdout;
    } finally {
      target.kill('SIGKILL');
    }
    expect(out).toMatch(/hotpatch guard: first cycle: \d+\/\d+ checks, 1 processes, [\d.]+ MB compared/);
    // Only the first cycle: its count of checks done only grows (a second cycle would start at 1 again).
    const done = [...out.matchAll(/first cycle: (\d+)\//g)].map((m) => Number(m[1]));
    expect(done).toEqual([...done].sort((x, y) => x - y));
    expect(new Set(done).size).toBe(done.length);
    expect(out).toMatch(/guard: stopped/);
    const piped = await runCli(['guard', '--pid', String(process.pid), '--interval', '0.3', '--duration', '2', '--no-ptrace']);
    expect(piped.stderr).not.toMatch(/first cycle/);
  }, 120_000);
});

