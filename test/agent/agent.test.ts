/**
 * The store and `hotpatch agent` against real processes: store add verifies before it copies
 * (untrusted refused, tampered file caught on read, two writers), the agent applies on start,
 * patches processes started later (latency measured over 20 starts), withdraws a removed patch
 * everywhere, survives a SIGKILL in the middle of an apply (recover, no double apply), copes with a
 * target that exits while being patched, publishes metrics and status, and signals readiness over
 * $NOTIFY_SOCKET.
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listPatches } from '../../src/patch/engine/index.js';
import { killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { value } from '../updater/helpers.js';
import { openProcConnector } from '../../src/agent/proc-connector.js';
import { cli, killAgents, makeAgentFixture, startAgent, type AgentFixture } from './helpers.js';

const run = promisify(execFile);
killTargetsAfterAll();
afterAll(killAgents);

let f: AgentFixture;
const targets: Target[] = [];

beforeAll(async () => {
  f = await makeAgentFixture();
}, 120_000);

afterAll(() => {
  if (f) rmSync(f.dir, { recursive: true, force: true });
});

async function connectorAvailable(): Promise<boolean> {
  try {
    (await openProcConnector()).close();
    return true;
  } catch {
    return false;
  }
}

function applied(pid: number): string[] {
  return listPatches(pid).patches.filter((p) => p.state === 'applied').map((p) => p.id);
}

async function until(pred: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Waits until the agent has patched new process `pid` with the test's patch (it may still be starting). */
function untilPatched(pid: number): Promise<void> {
  return until(() => {
    try {
      return applied(pid).includes(f.patchId);
    } catch {
      return false; // not readable yet (the process is still starting)
    }
  }, 5000, `new process ${pid} patched`);
}

const agentArgs = (): string[] => ['--store', f.store, '--trust', f.pub, '--status-file', join(f.dir, 'agent-status.json'), '--interval', '0.1'];

describe('hotpatch store', () => {
  it('refuses an untrusted package (exit 3) and copies nothing', async () => {
    const r = await cli(['store', 'add', f.untrustedPkg, '--store', f.store, '--trust', f.pub]);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/PACKAGE_UNTRUSTED/);
    expect(existsSync(join(f.store, `${f.patchId}.hpk`))).toBe(false);
  });

  it('two writers at once: both succeed, one verified copy, no temporary file left', async () => {
    const [a, b] = await Promise.all([
      cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub, '--json']),
      cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub, '--json']),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect([JSON.parse(a.stdout).status, JSON.parse(b.stdout).status].sort()).toEqual(['added', 'already-stored']);
    expect(readdirSync(f.store).filter((n) => !n.startsWith('.lock'))).toEqual([`${f.patchId}.hpk`]);
    const l = await cli(['store', 'list', '--store', f.store, '--trust', f.pub, '--json']);
    const j = JSON.parse(l.stdout);
    expect(j.packages).toHaveLength(1);
    expect(j.packages[0]).toMatchObject({ id: f.patchId, cves: ['CVE-2024-0001'], severity: 'high', description: 'lib_value returns x + 2' });
  });

  it('a file tampered with in the store is reported invalid on read and never used', async () => {
    const dir = join(f.dir, 'store-tamper');
    expect((await cli(['store', 'add', f.pkg, '--store', dir, '--trust', f.pub])).code).toBe(0);
    const p = join(dir, `${f.patchId}.hpk`);
    const b = readFileSync(p);
    b[b.length - 70] ^= 1; // inside the signature
    writeFileSync(p, b);
    const j = JSON.parse((await cli(['store', 'list', '--store', dir, '--trust', f.pub, '--json'])).stdout);
    expect(j.packages).toEqual([]);
    expect(j.invalid).toHaveLength(1);
    writeFileSync(p, b.subarray(0, 100)); // half a file
    const k = JSON.parse((await cli(['store', 'list', '--store', dir, '--trust', f.pub, '--json'])).stdout);
    expect(k.invalid[0].code).toMatch(/PACKAGE_/);
  });

  it('refuses a store directory writable by others', async () => {
    const dir = join(f.dir, 'store-open');
    await cli(['store', 'add', f.pkg, '--store', dir, '--trust', f.pub]);
    const { chmodSync } = await import('node:fs');
    chmodSync(dir, 0o777);
    const r = await cli(['store', 'list', '--store', dir, '--trust', f.pub]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/STORE_UNSAFE/);
  });
});

describe('hotpatch agent', () => {
  it('applies on start, patches new processes within 1 s, metrics, status; withdraws everywhere', async () => {
    for (let i = 0; i < 2; i++) targets.push(await startTarget(f.prog, ['2']));
    const port = 20000 + Math.floor(Math.random() * 20000);
    const agent = startAgent([...agentArgs(), '--metrics', String(port)]);
    try {
      await agent.waitLog((e) => e.event === 'ready');
      // It uses the process connector exactly when this machine offers it to this test too.
      expect((await agent.waitLog((e) => e.event === 'start')).discovery).toBe(await connectorAvailable() ? 'netlink' : 'poll');
      await until(() => targets.every((t) => applied(t.pid).includes(f.patchId)), 10_000, 'patched on start');
      for (const t of targets) expect(await value(t)).toBe(12);

      // New processes: time from spawn to patched.
      const lat: number[] = [];
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        const t = await startTarget(f.prog, ['1'], { readyText: null });
        await untilPatched(t.pid);
        lat.push(performance.now() - t0);
        if (i < 18) await t.kill();
        else targets.push(t);
      }
      lat.sort((a, b) => a - b);
      const median = lat[10]!;
      const max = lat[lat.length - 1]!;
      process.stderr.write(`agent: new process patched in median ${median.toFixed(0)} ms, max ${max.toFixed(0)} ms over 20 starts\n`);
      // The 1 s goal, for the typical start; the worst one on a loaded machine is only reported.
      expect(median).toBeLessThan(1000);
      for (const t of targets) expect(applied(t.pid)).toEqual([f.patchId]); // never twice

      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(metrics).toMatch(/^hotpatch_agent_up 1$/m);
      await until(async () => new RegExp(`hotpatch_agent_processes_patched\\{patch="${f.patchId}"\\} ${targets.length}`).test(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()), 3000, 'metrics');
      expect(metrics).toMatch(/hotpatch_agent_apply_seconds_count [1-9]/);

      const st = await cli(['status', '--json', '--store', f.store, '--trust', f.pub, '--status-file', join(f.dir, 'agent-status.json'), '--wait', f.patchId, '--timeout', '10']);
      expect(st.code, st.stderr).toBe(0);
      const s = JSON.parse(st.stdout);
      expect(s.agent.pid).toBe(agent.child.pid);
      const p = s.patches.find((x: { id: string }) => x.id === f.patchId);
      expect(p).toMatchObject({ cves: ['CVE-2024-0001'], severity: 'high' });
      for (const t of targets) expect(p.processes).toContainEqual(expect.objectContaining({ pid: t.pid, state: 'applied' }));

      // Withdraw.
      const rm = await cli(['store', 'remove', f.patchId, '--store', f.store]);
      expect(rm.code, rm.stderr).toBe(0);
      await until(() => targets.every((t) => !applied(t.pid).includes(f.patchId)), 10_000, 'withdrawn everywhere');
      for (const t of targets) expect(await value(t)).toBe(11);
      const gone = await cli(['status', '--store', f.store, '--trust', f.pub, '--wait-gone', f.patchId, '--timeout', '5']);
      expect(gone.code, gone.stderr).toBe(0);
      const removes = agent.log.filter((e) => e.event === 'remove' && e.status === 'removed');
      expect(removes.length).toBe(targets.length);
    } finally {
      await agent.kill('SIGTERM');
    }
    expect(agent.log.at(-1)?.event).toBe('stop');
  }, 120_000);

  it('killed with SIGKILL in the middle of an apply: the next agent recovers, applies once, target unharmed', async () => {
    expect((await cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub])).code).toBe(0);
    expect(targets.every((t) => applied(t.pid).length === 0)).toBe(true); // else there is nothing to crash in
    const crash = startAgent(agentArgs(), { HOTPATCH_FAULT: 'apply:first-site-switched' });
    await new Promise<void>((res) => crash.child.once('exit', () => res()));
    expect(crash.child.signalCode).toBe('SIGKILL');
    // Killed in whichever target reached the step first; others may be mid-apply too (concurrency).
    const unfinished = targets.filter((x) => {
      const mid = listPatches(x.pid);
      return mid.transaction ?? mid.patches.find((p) => p.state === 'pending');
    });
    expect(unfinished.length).toBeGreaterThanOrEqual(1);
    const agent = startAgent(agentArgs());
    try {
      await agent.waitLog((e) => e.event === 'recover');
      await until(() => targets.every((x) => applied(x.pid).includes(f.patchId)), 10_000, 'patched after restart');
      for (const x of targets) {
        expect(applied(x.pid)).toEqual([f.patchId]);
        expect(await value(x)).toBe(12);
      }
      // A restart of a healthy agent changes nothing.
      await agent.kill('SIGKILL');
      const again = startAgent(agentArgs());
      await again.waitLog((e) => e.event === 'ready');
      await new Promise((r) => setTimeout(r, 500));
      expect(again.log.filter((e) => e.event === 'apply' && e.status === 'patched')).toEqual([]);
      await again.kill('SIGTERM');
    } finally {
      await agent.kill();
    }
  }, 60_000);

  it('a target that exits while being patched: logged, forgotten, the agent keeps going', async () => {
    const agent = startAgent(agentArgs(), { HOTPATCH_FAULT_TARGET: 'apply:frozen' });
    try {
      await agent.waitLog((e) => e.event === 'ready');
      const t = await startTarget(f.prog, ['1'], { readyText: null });
      await agent.waitLog((e) => e.event === 'apply' && e.pid === t.pid && e.status !== 'patched', 10_000);
      await until(() => t.child.exitCode !== null || t.child.signalCode !== null, 5000, 'target gone');
      await new Promise((r) => setTimeout(r, 300));
      expect(agent.child.exitCode).toBeNull();
      for (const x of targets) expect(applied(x.pid)).toEqual([f.patchId]);
    } finally {
      await agent.kill('SIGTERM');
    }
  }, 60_000);

  it('tells systemd it is ready: READY=1 on $NOTIFY_SOCKET (a unix datagram socket)', async () => {
    const sock = join(f.dir, 'notify.sock');
    const py = spawn('python3', ['-c', `import socket,sys
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.bind(sys.argv[1]); print('bound',flush=True)
s.settimeout(30); print(s.recv(4096).decode().replace('\\n','|'),flush=True)`, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    py.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    try {
      await until(() => out.includes('bound'), 10_000, 'python socket');
      const agent = startAgent(agentArgs(), { NOTIFY_SOCKET: sock });
      try {
        await until(() => /READY=1/.test(out), 15_000, 'READY=1');
      } finally {
        await agent.kill('SIGTERM');
      }
    } finally {
      py.kill('SIGKILL');
    }
  }, 60_000);

  it('where the connector is unavailable (a network namespace) it polls /proc and still patches a new process', async () => {
    expect((await cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub])).code).toBe(0);
    const ns = `hp-agent-${process.pid}`;
    await run('ip', ['netns', 'add', ns]);
    const agent = startAgent(agentArgs(), {}, ['ip', 'netns', 'exec', ns]);
    try {
      const start = await agent.waitLog((e) => e.event === 'start');
      expect(start).toMatchObject({ discovery: 'poll' });
      expect(String(start.reason)).toMatch(/process connector is not available/);
      await agent.waitLog((e) => e.event === 'ready');
      const t0 = performance.now();
      const t = await startTarget(f.prog, ['1'], { readyText: null });
      try {
        await untilPatched(t.pid);
        process.stderr.write(`agent (polling in a netns): new process patched in ${(performance.now() - t0).toFixed(0)} ms\n`);
      } finally {
        await t.kill();
      }
    } finally {
      await agent.kill('SIGTERM');
      await run('ip', ['netns', 'del', ns]);
    }
  }, 60_000);
  it('stacked patches: withdrawing the bottom one while the top one is stored takes the top off first, then re-applies it', async () => {
    expect((await cli(['store', 'add', f.pkg, '--store', f.store, '--trust', f.pub])).code).toBe(0);
    const agent = startAgent(agentArgs());
    try {
      await until(() => targets.every((t) => applied(t.pid).includes(f.patchId)), 10_000, 'A applied');
      const b = await cli(['store', 'add', f.pkg2, '--store', f.store, '--trust', f.pub]);
      expect(b.code, b.stderr).toBe(0);
      await until(() => targets.every((t) => applied(t.pid).join() === [f.patchId, f.patchId2].join()), 10_000, 'B stacked on A');
      for (const t of targets) expect(await value(t)).toBe(13);

      const mark = agent.log.length;
      expect((await cli(['store', 'remove', f.patchId, '--store', f.store])).code).toBe(0);
      await until(() => targets.every((t) => applied(t.pid).join() === f.patchId2), 10_000, 'A gone, B alone');
      for (const t of targets) expect(await value(t)).toBe(13);
      // The record says B is back before the agent's log line for it is written: wait for the line.
      const reapplied = (pid: number) => agent.log.slice(mark).some((e) => e.pid === pid && e.event === 'apply' && e.patch === f.patchId2 && e.status === 'patched');
      await until(() => targets.every((t) => reapplied(t.pid)), 10_000, 'B re-applied, logged');
      for (const t of targets) {
        const mine = agent.log.slice(mark).filter((e) => e.pid === t.pid && (e.event === 'apply' || e.event === 'remove'));
        expect(mine.filter((e) => e.state === 'failed')).toEqual([]); // a busy target may be retried (pending), nothing fails
        const steps = mine.filter((e) => e.status === 'removed' || e.status === 'patched');
        const seq = steps.map((e) => `${e.event} ${e.patch} ${e.status}`);
        // In this order: B (on top) off, A off, B back on; A never again. (A busy target retried
        // later may add a step of its own before them; the order is what matters.)
        const topOff = seq.indexOf(`remove ${f.patchId2} removed`);
        const bottomOff = seq.indexOf(`remove ${f.patchId} removed`, topOff + 1);
        const topOn = seq.indexOf(`apply ${f.patchId2} patched`, bottomOff + 1);
        expect(topOff >= 0 && bottomOff > topOff && topOn > bottomOff, seq.join('; ')).toBe(true);
        expect(seq.slice(bottomOff).includes(`apply ${f.patchId} patched`), seq.join('; ')).toBe(false);
        expect(steps[topOff]!.why).toBe('stacked above a withdrawn patch');
      }

      expect((await cli(['store', 'remove', f.patchId2, '--store', f.store])).code).toBe(0);
      await until(() => targets.every((t) => applied(t.pid).length === 0), 10_000, 'B withdrawn');
      for (const t of targets) expect(await value(t)).toBe(11);
    } finally {
      await agent.kill('SIGTERM');
    }
  }, 90_000);
});
