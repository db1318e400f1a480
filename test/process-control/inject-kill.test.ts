/**
 * Issue #14, "the target survives anything the patcher suffers": a patcher process running the
 * real injection code (test/fixtures/process-control/inject-driver.mjs over dist/) is SIGKILLed at
 * random instants and at every named point inside each injected call (HOTPATCH_FAULT_INJECT), while
 * the target is under load (load.c: busy threads holding values in YMM/callee-saved registers and
 * a custom MXCSR, threads blocked in read/epoll_wait/nanosleep/futex). After every kill the target
 * must be alive, untraced, with no thread left stopped, and its work must go on correctly (it
 * aborts itself on any corruption it can see).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INJECT_FAULT_PHASES } from '../../src/process/control/freeze.js';
import { compile, FIXTURES, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { prng } from '../helpers/prng.js';

killTargetsAfterAll();

const DRIVER = join(FIXTURES, 'process-control/inject-driver.mjs');
const drivers = new Set<ChildProcess>();
afterAll(() => {
  for (const d of drivers) d.kill('SIGKILL');
});

let t: Target;
beforeAll(async () => {
  t = await startTarget(await compile({ file: 'process-control/load.c', flags: ['-O2'] }));
});

interface DriverRun {
  signal: NodeJS.Signals | null;
  code: number | null;
  out: string;
}

/** Runs the driver; with `killAfterMs`, SIGKILLs it that long after it printed "ready". */
function runDriver(args: string[], env: Record<string, string> = {}, killAfterMs?: number): Promise<DriverRun> {
  return new Promise((resolve) => {
    const d = spawn('node', [DRIVER, String(t.pid), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    drivers.add(d);
    let out = '';
    const onData = (b: Buffer) => {
      out += b.toString();
      if (killAfterMs !== undefined && out.includes('ready') && !timer) timer = setTimeout(() => d.kill('SIGKILL'), killAfterMs);
    };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const guard = setTimeout(() => {
      out += '\n(test: driver still running after 20 s, killed)';
      d.kill('SIGKILL');
    }, 20_000);
    d.stdout!.on('data', onData);
    d.stderr!.on('data', onData);
    d.on('exit', (code, signal) => {
      drivers.delete(d);
      if (timer) clearTimeout(timer);
      clearTimeout(guard);
      resolve({ code, signal, out });
    });
  });
}

/** Alive, no tracer on any thread, no thread in a stopped/traced state. */
function expectHealthy(label: string): void {
  expect(t.child.exitCode, `${label}: ${t.output()}`).toBeNull();
  expect(t.child.signalCode, `${label}: ${t.output()}`).toBeNull();
  for (const tid of readdirSync(`/proc/${t.pid}/task`)) {
    const st = readFileSync(`/proc/${t.pid}/task/${tid}/status`, 'utf8');
    expect(/TracerPid:\s+(\d+)/.exec(st)![1], `${label}: thread ${tid} still traced`).toBe('0');
    expect(/State:\s+(\S)/.exec(st)![1], `${label}: thread ${tid} left stopped`).not.toMatch(/[tT]/);
  }
}

type Status = Record<'busy' | 'reads' | 'epolls' | 'sleeps' | 'futex', number>;

async function status(): Promise<Status> {
  const before = t.output().length;
  t.child.stdin!.write('s\n');
  const re = /status busy=(\d+) reads=(\d+) epolls=(\d+) eintr=\d+ sleeps=(\d+) futex=(\d+)\n/;
  await t.waitFor({ test: (s: string) => re.test(s.slice(before)) } as unknown as RegExp, 5000);
  const m = re.exec(t.output().slice(before))!;
  return { busy: Number(m[1]), reads: Number(m[2]), epolls: Number(m[3]), sleeps: Number(m[4]), futex: Number(m[5]) };
}

/** Every kind of work advances (and the target has not aborted on a wrong value). */
async function expectWorking(label: string): Promise<void> {
  const a = await status();
  await new Promise((r) => setTimeout(r, 60));
  const b = await status();
  for (const k of Object.keys(a) as Array<keyof Status>) expect(b[k], `${label}: ${k} stalled`).toBeGreaterThan(a[k]);
  expectHealthy(label);
}

describe('the patcher SIGKILLed during injected system calls', () => {
  it('runs unharmed when not killed (sanity: the driver really injects)', async () => {
    for (const mode of ['default', 'all']) {
      const r = await runDriver([mode, '20']);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(/done injections=[1-9]\d*/);
    }
    await expectWorking('after plain runs');
  }, 60_000);

  it('at every injection phase of calls 1, 2, 3 and 6 (and at thaw), on the picked thread and on every thread', async () => {
    let kills = 0;
    for (const mode of ['default', 'all']) {
      for (const phase of INJECT_FAULT_PHASES) {
        // Calls 1-5 are the five calls of the first freeze (the 1st arms the thread, the others
        // start armed); 6 is the first call of the next freeze in 'default' mode.
        const ns = phase === 'mask-restored' ? [5] : mode === 'default' ? [1, 2, 3, 6] : [1, 6];
        for (const n of ns) {
          const r = await runDriver([mode], { HOTPATCH_FAULT_INJECT: `${phase}@${n}` });
          expect(r.signal, `${mode} ${phase}@${n}: ${r.out}`).toBe('SIGKILL');
          expect(r.out).not.toMatch(/still running/);
          kills++;
          expectHealthy(`${mode} ${phase}@${n}`);
        }
      }
      await expectWorking(`after ${mode} phase kills`);
    }
    expect(kills).toBe(5 * 4 + 1 + 5 * 2 + 1);
  }, 120_000);

  it('at random instants (100 kills)', async () => {
    const rnd = prng(14);
    for (let i = 0; i < 100; i++) {
      const mode = i % 3 === 0 ? 'all' : 'default';
      const r = await runDriver([mode], {}, Math.floor(rnd() * 40));
      expect(r.signal, r.out).toBe('SIGKILL');
      expectHealthy(`random kill ${i}`);
      if (i % 25 === 24) await expectWorking(`after random kill ${i}`);
    }
    await expectWorking('after random kills');
  }, 180_000);
});
