/**
 * The guard as a service people run (issue #13 items 3 and 8): SIGHUP reloads the policy and the
 * guard survives a policy that does not load; a JSON log renamed away (logrotate) is re-created;
 * JSON lines carry a `level`; stderr lines carry sd-daemon priorities when stderr is the journal;
 * the metrics pass `promtool check metrics` and the shipped alert rules `promtool check rules`.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuardMetrics } from '../../src/guard/index.js';
import { REPO_ROOT, killTargetsAfterAll } from '../helpers/native.js';
import { buildFixtures, startVictim, type Fixtures } from './helpers.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
killTargetsAfterAll();

let fx: Fixtures;
const dirs: string[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  fx = await buildFixtures();
}, 180_000);

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

async function until(pred: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function jsonLines(path: string): Array<Record<string, unknown>> {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8').trim().split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
}

const promtool = (() => {
  try {
    execFileSync('promtool', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('guard service: SIGHUP, log rotation, levels, journald priorities', () => {
  it('SIGHUP reloads the policy (a bad one leaves the old in force), a renamed log is re-created, the guard keeps running', async () => {
    const { t } = await startVictim(fx.victim);
    const comm = readFileSync(`/proc/${t.pid}/comm`, 'utf8').trim();
    const dir = tempDir('guard-hup-');
    const policy = join(dir, 'guard.json');
    const log = join(dir, 'guard.jsonl');
    writeFileSync(policy, JSON.stringify({ protect: [{ name: comm }] }));
    // Stderr to a file whose dev:ino is JOURNAL_STREAM: what systemd gives a service logging to the journal.
    const errPath = join(dir, 'stderr');
    const errFd = openSync(errPath, 'w');
    const st = statSync(errPath, { bigint: true });
    const child = spawn('node', [CLI, 'guard', '--policy', policy, '--pid', String(t.pid), '--interval', '0.3', '--state-dir', join(dir, 'state'), '--json-log', log, '--no-ptrace', '--duration', '120'], {
      stdio: ['ignore', 'ignore', errFd],
      env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` },
    });
    closeSync(errFd);
    children.push(child);
    await until(() => jsonLines(log).some((l) => l.type === 'process' && l.event === 'watch' && l.pid === t.pid), 'the watch event');
    await until(() => jsonLines(log).some((l) => l.type === 'cycle'), 'a cycle event');
    for (const l of jsonLines(log)) expect(l.level, JSON.stringify(l)).toBe('info');

    // logrotate: rename the log away, then SIGHUP; the next lines go to a new file.
    const rotated = `${log}.1`;
    renameSync(log, rotated);
    // A policy that no longer selects the victim (ignore wins over the explicit pid).
    writeFileSync(policy, JSON.stringify({ protect: [{ name: comm }], ignore: [{ name: comm }] }));
    child.kill('SIGHUP');
    await until(() => existsSync(log), 'a new log file after SIGHUP');
    await until(() => jsonLines(log).some((l) => l.type === 'reload'), 'the reload line');
    expect(jsonLines(log).find((l) => l.type === 'reload')).toMatchObject({ ok: true, level: 'notice', policy });
    await until(() => jsonLines(log).some((l) => l.type === 'process' && l.event === 'unwatch' && l.pid === t.pid), 'the new policy taking effect');
    expect(jsonLines(rotated).some((l) => l.type === 'reload')).toBe(false);
    expect(child.exitCode).toBeNull();

    // A policy that does not parse: reported, old policy stays, guard keeps running.
    writeFileSync(policy, '{"protect": [');
    child.kill('SIGHUP');
    await until(() => jsonLines(log).some((l) => l.type === 'reload' && l.ok === false), 'the failed reload line');
    expect(jsonLines(log).find((l) => l.type === 'reload' && l.ok === false)).toMatchObject({ level: 'err', policy });
    await until(() => jsonLines(log).filter((l) => l.type === 'cycle').length >= 2, 'cycles after the failed reload');
    expect(child.exitCode).toBeNull();

    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    expect(child.exitCode).toBe(0);
    const err = readFileSync(errPath, 'utf8');
    const lines = err.trim().split('\n');
    // Every stderr line carries a priority: <5> notice for start/reload/stop, <6> info, <3> the failed reload.
    expect(lines.filter((l) => !/^<[0-7]>guard: /.test(l)), err).toEqual([]);
    expect(err).toMatch(/^<6>guard: watching \d+/m);
    expect(err).toMatch(/^<5>guard: SIGHUP: policy .* reloaded$/m);
    expect(err).toMatch(/^<3>guard: SIGHUP: policy .* not reloaded, the previous one stays in force/m);
    expect(err).toMatch(/^<5>guard: stopped$/m);
    await t.kill();
  }, 180_000);

  it('without JOURNAL_STREAM matching stderr, stderr lines have no priority prefix', async () => {
    const { t } = await startVictim(fx.victim);
    const dir = tempDir('guard-nojournal-');
    const r = await run('node', [CLI, 'guard', '--pid', String(t.pid), '--interval', '0.2', '--state-dir', dir, '--no-ptrace', '--duration', '1'], {
      env: { ...process.env, JOURNAL_STREAM: '1:1' },
    });
    expect(r.stderr).toMatch(/^guard: watching \d+/m);
    expect(r.stderr).not.toMatch(/^<\d>/m);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; level: string });
    expect(events.find((e) => e.type === 'process')).toMatchObject({ level: 'info' });
    await t.kill();
  }, 60_000);
});

describe('Prometheus: metrics and alert rules', () => {
  it.skipIf(!promtool)('`promtool check metrics` accepts the exposition, findings and errors included', () => {
    const m = new GuardMetrics();
    m.countFinding(0, 'critical');
    m.countFinding(3, 'high');
    m.countAction('restore', true);
    m.countAction('kill', false);
    m.countError('check');
    m.bytesVerifiedTotal = 123456;
    const text = m.render();
    expect(text).toMatch(/^hotpatch_findings_total\{code="0",structure="module code",severity="critical"\} 1$/m);
    expect(text).toMatch(/^hotpatch_findings_total\{code="3",structure="import table \(GOT\/PLT\)",severity="high"\} 1$/m);
    expect(text).toMatch(/^hotpatch_actions_total\{action="kill",ok="false"\} 1$/m);
    expect(text).toMatch(/^hotpatch_errors_total\{kind="check"\} 1$/m);
    expect(text).toMatch(/^hotpatch_verified_bytes_total 123456$/m);
    // promtool prints lint problems and exits non-zero on any.
    const out = execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(out.trim()).toBe('');
  });

  it.skipIf(!promtool)('`promtool check rules` accepts deploy/prometheus/alerts.yml and `promtool test rules` fires its alerts', () => {
    const rules = join(REPO_ROOT, 'deploy/prometheus/alerts.yml');
    const out = execFileSync('promtool', ['check', 'rules', rules], { encoding: 'utf8' });
    expect(out).toMatch(/SUCCESS: \d+ rules found/);
    const tests = join(REPO_ROOT, 'deploy/prometheus/alerts.test.yml');
    // promtool resolves rule_files relative to the test file.
    expect(basename(rules)).toBe('alerts.yml');
    execFileSync('promtool', ['test', 'rules', tests], { encoding: 'utf8' });
  });

  it('every metric the alert rules and the Grafana dashboard use is exported by the guard', () => {
    const exported = new Set([...new GuardMetrics().render().matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]!));
    const used = (text: string) => new Set([...text.matchAll(/\b(hotpatch_[a-z_]+)\b/g)].map((m) => m[1]!).filter((n) => n !== 'hotpatch_guard'));
    const alerts = readFileSync(join(REPO_ROOT, 'deploy/prometheus/alerts.yml'), 'utf8');
    const dashboard = readFileSync(join(REPO_ROOT, 'deploy/grafana/hotpatch-guard.json'), 'utf8');
    JSON.parse(dashboard);
    for (const text of [alerts, dashboard]) {
      const names = [...used(text)];
      expect(names.length).toBeGreaterThan(3);
      expect(names.filter((n) => !exported.has(n))).toEqual([]);
    }
  });
});
