/**
 * The guard service: restore puts tampered code and GOT slots back and the program works again;
 * kill reacts to injected code; processes that start later are followed; the documented bound on
 * how long an item goes unchecked holds; metrics are served on loopback; the CLI speaks JSON lines.
 */
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Guard, GuardMetrics, GuardState, parsePolicy, serveMetrics, SEVERITIES, severityRank, type GuardEvent, type Severity } from '../../src/guard/index.js';
import { REPO_ROOT, killTargetsAfterAll } from '../helpers/native.js';
import { buildFixtures, command, jmpRel32, pokeMemory, startVictim, u64le, type Fixtures } from './helpers.js';

const run = promisify(execFile);
killTargetsAfterAll();

let fx: Fixtures;
const guards: Guard[] = [];

beforeAll(async () => {
  fx = await buildFixtures();
});

afterEach(async () => {
  await Promise.all(guards.splice(0).map((g) => g.stop()));
});

function startGuard(options: ConstructorParameters<typeof Guard>[0]): { guard: Guard; events: GuardEvent[]; waitFor: (pred: (e: GuardEvent) => boolean, ms?: number) => Promise<GuardEvent> } {
  const events: GuardEvent[] = [];
  const waiters: Array<() => void> = [];
  const guard = new Guard({
    intervalMs: 300,
    recheckDelayMs: 50,
    rescanMs: 100,
    allowPtrace: false,
    ...options,
    onEvent: (e) => {
      events.push(e);
      for (const w of waiters.splice(0)) w();
    },
  });
  guards.push(guard);
  guard.start();
  const waitFor = (pred: (e: GuardEvent) => boolean, ms = 20_000) =>
    new Promise<GuardEvent>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`no such guard event; got ${events.map((e) => e.type + (e.type === 'finding' ? `:${e.finding.code}/${e.finding.kind}` : '')).join(', ')}`)), ms);
      const check = () => {
        const hit = events.find(pred);
        if (hit) {
          clearTimeout(timer);
          res(hit);
        } else waiters.push(check);
      };
      check();
    });
  return { guard, events, waitFor };
}

describe('guard: restore', () => {
  it('writes the original code back over an inline hook and the program works again', async () => {
    const { t, a } = await startVictim(fx.victim);
    const dir = mkdtempSync(join(tmpdir(), 'guard-state-'));
    const g = startGuard({ pids: [t.pid], action: 'restore', state: new GuardState(dir, true) });
    await g.waitFor((e) => e.type === 'cycle');
    pokeMemory(t.pid, a.compute, jmpRel32(a.compute, a.evil));
    expect(await command(t, 'run')).toContain('compute=-1005');
    const e = await g.waitFor((x) => x.type === 'finding' && x.finding.code === 0);
    expect(e.type === 'finding' && e.outcome).toMatchObject({ performed: 'restore', ok: true });
    expect(await command(t, 'run')).toContain('compute=16');
    const restores = readFileSync(join(dir, 'restores.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { pid: number; code: number; address: string });
    expect(restores).toHaveLength(1);
    expect(restores[0]).toMatchObject({ pid: t.pid, code: 0, address: `0x${a.compute.toString(16)}` });
    await t.kill();
  });

  it('puts an overwritten GOT slot back to the definition the dynamic linker chose', async () => {
    const { t, a } = await startVictim(fx.victim);
    const g = startGuard({ pids: [t.pid], action: 'restore' });
    await g.waitFor((e) => e.type === 'cycle');
    pokeMemory(t.pid, a.gotstrtol, u64le(a.fake_strtol));
    expect(await command(t, 'run')).toContain('strtol=666');
    const e = await g.waitFor((x) => x.type === 'finding' && x.finding.code === 3);
    expect(e.type === 'finding' && e.outcome).toMatchObject({ performed: 'restore', ok: true });
    expect(await command(t, 'run')).toContain('strtol=42');
    await t.kill();
  });
});

describe('guard: other actions, process following, bound, metrics', () => {
  it('kills a process that maps injected code (policy action per structure)', async () => {
    const { t } = await startVictim(fx.victim);
    const policy = parsePolicy(JSON.stringify({ actions: { default: 'log', 5: 'kill' } }));
    const g = startGuard({ pids: [t.pid], policy });
    await g.waitFor((e) => e.type === 'cycle');
    t.child.stdin!.write('shellcode\n');
    const e = await g.waitFor((x) => x.type === 'finding' && x.finding.code === 5);
    expect(e.type === 'finding' && e.outcome.performed).toBe('kill');
    await new Promise((r) => t.child.once('exit', r));
    expect(t.child.signalCode).toBe('SIGKILL');
  });

  it('follows processes of an executable that start after the guard and stops watching them at exit', async () => {
    // A private copy, so that other test files running the same fixture do not match.
    const exe = join(mkdtempSync(join(tmpdir(), 'guard-follow-')), 'mt-follow');
    copyFileSync(fx.mt, exe);
    const g = startGuard({ exe: [exe], intervalMs: 200 });
    const { t } = await startVictim(fx.victim); // not selected
    const mt = await (await import('../helpers/native.js')).startTarget(exe);
    await g.waitFor((e) => e.type === 'process' && e.event === 'watch' && e.pid === mt.pid);
    expect(g.guard.watchedPids).toEqual([mt.pid]);
    expect(g.events.some((e) => e.type === 'process' && e.pid === t.pid)).toBe(false);
    await mt.kill();
    await g.waitFor((e) => e.type === 'process' && e.event === 'exit' && e.pid === mt.pid);
    expect(g.guard.watchedPids).toEqual([]);
    await t.kill();
  });

  it('checks every structure of every process within 2 x interval (plus check time) and reports no false positives', async () => {
    const a = await startVictim(fx.victim);
    const b = await startVictim(fx.victim);
    const metrics = new GuardMetrics();
    const g = startGuard({ pids: [a.t.pid, b.t.pid], intervalMs: 400, metrics });
    const t0 = Date.now();
    while (metrics.cyclesTotal < 5) await g.waitFor(() => metrics.cyclesTotal >= 5, 60_000).catch(() => undefined);
    const elapsed = (Date.now() - t0) / 1000;
    expect(g.events.filter((e) => e.type === 'finding')).toEqual([]);
    // The bound: an item waits at most the rest of its cycle plus the next cycle, and a cycle lasts
    // the interval unless its checks take longer (the first, cold one does).
    const cycles = g.events.flatMap((e) => (e.type === 'cycle' ? [e.seconds] : []));
    expect(cycles.every((c) => c >= 0.4 - 0.01)).toBe(true);
    const bound = Math.max(...cycles.slice(1).map((c, i) => c + cycles[i]!));
    expect(metrics.maxItemAgeSeconds).toBeGreaterThan(0);
    expect(metrics.maxItemAgeSeconds).toBeLessThanOrEqual(bound + 0.05);
    expect(metrics.checksTotal).toBeGreaterThanOrEqual(5 * 2 * 11 - 22);
    expect(elapsed).toBeGreaterThan(1.5);
    const server = await serveMetrics(metrics, 0);
    const port = (server.address() as { port: number }).port;
    const body = await new Promise<string>((res, rej) => {
      request({ host: '127.0.0.1', port, path: '/metrics' }, (r) => {
        let s = '';
        r.on('data', (d: Buffer) => (s += d.toString()));
        r.on('end', () => res(s));
      }).on('error', rej).end();
    });
    server.close();
    expect(body).toMatch(/^hotpatch_checks_total \d+$/m);
    expect(body).toMatch(/^hotpatch_findings_total\{code="0",structure="module code",severity="critical"\} 0$/m);
    expect(body).toMatch(/^hotpatch_verified_bytes_total [1-9]\d*$/m);
    expect(body).toMatch(/^hotpatch_last_cycle_duration_seconds [\d.]+$/m);
    expect(body).toMatch(/^hotpatch_watched_processes 2$/m);
    expect(body).toMatch(/^hotpatch_build_info\{version="\d+\.\d+\.\d+[^"]*",nodejs="[^"]+"\} 1$/m);
    await a.t.kill();
    await b.t.kill();
  });
});

describe('CLI: hotpatch verify and hotpatch guard', () => {
  const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
  const cliBuilt = (() => {
    try {
      return readFileSync(CLI).length > 0;
    } catch {
      return false;
    }
  })();

  it.skipIf(!cliBuilt)('verify exits 5 only for findings at or above --fail-on (default high, policy failOn)', async () => {
    const { t } = await startVictim(fx.victim, { ...process.env, LD_PRELOAD: fx.preload });
    const exitOf = async (extra: string[]) => {
      const r = await run('node', [CLI, 'verify', '--pid', String(t.pid), '--no-ptrace', '--json', ...extra]).then((x) => ({ code: 0, stdout: x.stdout }), (e: { code: number; stdout: string }) => e);
      return { code: r.code, doc: JSON.parse(r.stdout) as { failOn: string; findings: Array<{ severity: Severity }> } };
    };
    const base = await exitOf([]);
    expect(base.doc.findings.length).toBeGreaterThan(0);
    expect(base.doc.failOn).toBe('high');
    const worst = base.doc.findings.map((f) => f.severity).sort((x, y) => severityRank(y) - severityRank(x))[0]!;
    expect(severityRank(worst)).toBeLessThan(severityRank('high')); // an interposer, not a hook
    expect(base.code).toBe(0);
    expect((await exitOf(['--fail-on', worst])).code).toBe(5);
    const above = SEVERITIES[severityRank(worst) + 1]!;
    expect((await exitOf(['--fail-on', above])).code).toBe(0);
    const dir = mkdtempSync(join(tmpdir(), 'guard-failon-'));
    writeFileSync(join(dir, 'policy.json'), JSON.stringify({ failOn: worst }));
    expect((await exitOf(['--policy', join(dir, 'policy.json')])).code).toBe(5);
    const bad = await run('node', [CLI, 'verify', '--pid', String(t.pid), '--fail-on', 'urgent']).catch((e: { code: number; stderr: string }) => e);
    expect((bad as { code: number }).code).toBe(2);
    await t.kill();
  });

  it.skipIf(!cliBuilt)('verify --json prints the documented shape and exits 5 on findings, 0 when clean', async () => {
    const { t, a } = await startVictim(fx.victim);
    const clean = await run('node', [CLI, 'verify', '--pid', String(t.pid), '--json']);
    const doc = JSON.parse(clean.stdout) as { checked: { processes: number; bytes: number }; findings: unknown[] };
    expect(doc.checked.processes).toBe(1);
    expect(doc.checked.bytes).toBeGreaterThan(0);
    expect(doc.findings).toEqual([]);
    pokeMemory(t.pid, a.compute, jmpRel32(a.compute, a.evil));
    const err = await run('node', [CLI, 'verify', '--pid', String(t.pid), '--json']).catch((e: { code: number; stdout: string }) => e);
    expect((err as { code: number }).code).toBe(5);
    const bad = JSON.parse((err as { stdout: string }).stdout) as { findings: Array<Record<string, unknown>> };
    expect(bad.findings).toHaveLength(1);
    expect(Object.keys(bad.findings[0]!)).toEqual(expect.arrayContaining(['pid', 'code', 'structure', 'module', 'offset', 'symbol', 'expected', 'actual', 'severity', 'detail']));
    expect(bad.findings[0]).toMatchObject({ pid: t.pid, code: 0, symbol: 'compute', offset: expect.stringMatching(/^0x[0-9a-f]+$/), actual: expect.stringMatching(/^e9[0-9a-f]{8}/) });
    await t.kill();
  });

  it.skipIf(!cliBuilt)('guard prints findings as JSON lines and a human line on stderr', async () => {
    const { t, a } = await startVictim(fx.victim);
    const dir = mkdtempSync(join(tmpdir(), 'guard-cli-'));
    const child = spawn('node', [CLI, 'guard', '--pid', String(t.pid), '--interval', '0.3', '--action', 'restore', '--state-dir', dir, '--no-ptrace', '--duration', '30'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const until = async (pred: () => boolean) => {
      for (let i = 0; i < 300 && !pred(); i++) await new Promise((r) => setTimeout(r, 100));
    };
    await until(() => out.includes('"event":"watch"'));
    pokeMemory(t.pid, a.compute, jmpRel32(a.compute, a.evil));
    await until(() => out.includes('"type":"finding"'));
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { type: string; finding?: { code: number; kind: string }; outcome?: { performed: string; ok: boolean } });
    const finding = lines.find((l) => l.type === 'finding');
    expect(finding, out + err).toMatchObject({ finding: { code: 0, kind: 'inline-hook' }, outcome: { performed: 'restore', ok: true } });
    expect(err).toMatch(/guard: pid \d+ \[0 module code\] CRITICAL inline-hook/);
    expect(await command(t, 'run')).toContain('compute=16');
    await t.kill();
  });
});
