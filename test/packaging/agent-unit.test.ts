/**
 * deploy/hotpatch-agent.service as shipped: the agent keeps a stored patch applied to a process of
 * another user under exactly the unit's capability bounding set (`setpriv --bounding-set`), and
 * every capability the unit keeps is needed for that — CAP_SYS_ADMIN is not among them.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listPatches } from '../../src/patch/engine/list.js';
import { REPO_ROOT } from '../helpers/native.js';
import { CLI, cli, killAgents, makeAgentFixture, startAgent, type AgentFixture } from '../agent/helpers.js';

const run = promisify(execFile);
const UNIT = readFileSync(join(REPO_ROOT, 'deploy/hotpatch-agent.service'), 'utf8');
function has(tool: string): boolean {
  try {
    execFileSync(tool, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const setpriv = has('setpriv') && process.getuid?.() === 0;

function unitValue(key: string): string {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(UNIT);
  if (!m) throw new Error(`no ${key}= in the unit`);
  return m[1]!;
}

/** CAP_SYS_PTRACE → sys_ptrace (setpriv's spelling). */
const CAPS = unitValue('CapabilityBoundingSet').split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase());
const bounded = (caps: string[]): string[] => ['--inh-caps=-all', `--bounding-set=-all${caps.map((c) => `,+${c}`).join('')}`, '--'];

let f: AgentFixture;
let target: ChildProcess;

beforeAll(async () => {
  f = await makeAgentFixture();
  // nobody must be able to run the program from the test's private directory.
  for (const d of [f.dir, f.app]) chmodSync(d, 0o755);
  target = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', f.prog, '2'], { stdio: ['pipe', 'pipe', 'ignore'] });
  await new Promise<void>((res, rej) => {
    target.stdout!.once('data', () => res());
    target.once('exit', (c) => rej(new Error(`target exited ${c}`)));
  });
  expect((await cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub])).code).toBe(0);
}, 120_000);

afterAll(async () => {
  await killAgents();
  target?.kill('SIGKILL');
  if (f) rmSync(f.dir, { recursive: true, force: true });
});

const applied = (): string[] => listPatches(target.pid!).patches.filter((p) => p.state === 'applied').map((p) => p.id);

/** `hotpatch apply` of the stored package to the target under the bounding set `caps`: status and reason. */
async function applyWith(caps: string[]): Promise<{ status: string; reason: string }> {
  const r = await run('setpriv', [...bounded(caps), 'node', CLI, 'apply', f.pkg, '--pid', String(target.pid), '--trust', f.pub, '--json']).then(
    (x) => x.stdout,
    (e: { stdout: string }) => e.stdout,
  );
  const result = (JSON.parse(r) as { results: Array<{ status: string; reason?: string }> }).results[0];
  return { status: result?.status ?? 'none', reason: result?.reason ?? '' };
}

describe('the agent unit', () => {
  it('keeps the capabilities it documents, and no CAP_SYS_ADMIN', () => {
    expect(CAPS.sort()).toEqual(['checkpoint_restore', 'dac_override', 'sys_nice', 'sys_ptrace']);
    expect(unitValue('AmbientCapabilities')).toBe(unitValue('CapabilityBoundingSet'));
    for (const c of CAPS) expect(UNIT).toMatch(new RegExp(`^#\\s+CAP_${c.toUpperCase()}\\s+\\S`, 'm')); // each one explained
  });

  it.skipIf(!has('systemd-analyze'))('passes `systemd-analyze verify` (ExecStart= pointed at this checkout)', async () => {
    const unit = join(f.dir, 'hotpatch-agent.service');
    writeFileSync(unit, UNIT.replace(/^ExecStart=\/usr\/bin\/hotpatch /m, `ExecStart=${process.execPath} ${CLI} `));
    const r = await run('systemd-analyze', ['verify', unit]).then(
      (x) => ({ code: 0, out: x.stdout + x.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
    );
    expect(r.out.split('\n').filter((l) => l.includes('hotpatch-agent.service')), r.out).toEqual([]);
    expect(r.code, r.out).toBe(0);
  });

  it.skipIf(!setpriv)("ExecStart= under the unit's bounding set patches another user's process, and the fix runs", async () => {
    const argv = unitValue('ExecStart').split(/\s+/);
    expect(argv.slice(0, 2)).toEqual(['/usr/bin/hotpatch', 'agent']);
    const port = 20000 + ((process.pid + 7) % 20000);
    const paths: Record<string, string> = { '/var/lib/hotpatch/store': f.store, '9465': String(port) };
    const args = argv.slice(2).map((a) => paths[a] ?? a);
    const agent = startAgent([...args, '--trust', f.pub, '--status-file', join(f.dir, 'status.json'), '--interval', '0.1'], {}, ['setpriv', ...bounded(CAPS)]);
    try {
      await agent.waitLog((e) => e.event === 'apply' && e.pid === target.pid && e.status === 'patched', 60_000);
      expect(applied()).toEqual([f.patchId]);
      const answer = new Promise<string>((res) => target.stdout!.once('data', (d: Buffer) => res(d.toString())));
      target.stdin!.write('v\n');
      expect(await answer).toMatch(/^value=12 /); // the fixed lib_value: x + 2
    } finally {
      await agent.kill('SIGTERM');
    }
    expect((await cli(['remove', f.patchId, '--pid', String(target.pid), '--json'])).code).toBe(0);
    expect(applied()).toEqual([]);
  }, 120_000);

  it.skipIf(!setpriv)('each kept capability is needed to patch it: sys_ptrace, dac_override (/proc/PID/mem of another user), checkpoint_restore (map_files)', async () => {
    const needs: Array<[string, RegExp]> = [['sys_ptrace', /opening \/proc\/PID\/mem/], ['dac_override', /opening \/proc\/PID\/mem/], ['checkpoint_restore', /hotpatch record/]];
    for (const [c, reason] of needs) {
      const r = await applyWith(CAPS.filter((x) => x !== c));
      expect(r.status, `without ${c}`).toBe('failed');
      expect(r.reason, `without ${c}`).toMatch(reason);
      expect(applied(), `without ${c}`).toEqual([]); // refused cleanly: nothing half-applied
    }
    expect((await applyWith(CAPS)).status).toBe('patched');
    expect((await cli(['remove', f.patchId, '--pid', String(target.pid), '--json'])).code).toBe(0);
  }, 180_000);
});
