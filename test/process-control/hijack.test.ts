/**
 * hijackThread (one thread stopped, the others running) and rollingThreadsUsing (threads checked
 * one at a time), on a real multi-threaded target (fixtures/process-control/hijack.c).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { hijack, rollingCheck } from '../../src/patch/engine/control.js';
import {
  freezeProcess,
  hijackThread,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  pendingDetaches,
  PROCESS_EXITED,
  PROCESS_NOT_FROZEN,
  ProcessMemory,
  PROT_READ,
  PROT_WRITE,
  remoteMmap,
  remoteMunmap,
  rollingThreadsUsing,
  type AddressRange,
} from '../../src/process/control/index.js';
import { ask, compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';

killTargetsAfterAll();

const prog = () => compile({ file: 'process-control/hijack.c', flags: ['-O2'] });

interface Launched {
  t: Target;
  counters: bigint;
  spin: AddressRange;
  sleeper: AddressRange;
  other: AddressRange;
  reader: number;
  sleeperTid: number;
}

/** Runtime range of `name`: the printed address plus the symbol's size (nm -S). */
function range(path: string, printed: bigint, name: string): AddressRange {
  const line = execFileSync('nm', ['-S', '--defined-only', path], { encoding: 'utf8' })
    .split('\n')
    .find((l) => l.endsWith(` ${name}`))!;
  const size = BigInt(`0x${line.split(' ')[1]}`);
  return { start: printed, end: printed + size };
}

async function launch(spinners: number): Promise<Launched> {
  const path = await prog();
  const t = await startTarget(path, [String(spinners)]);
  await t.waitFor(/sleeper_tid=\d+/);
  await t.waitFor(/reader=\d+/);
  const out = t.output();
  const hex = (k: string) => BigInt(new RegExp(`${k}=(0x[0-9a-f]+)`).exec(out)![1]!);
  const l: Launched = {
    t,
    counters: hex('counters'),
    spin: range(path, hex('spin'), 'spin_loop'),
    sleeper: range(path, hex('sleeper'), 'sleeper_fn'),
    other: range(path, hex('other'), 'other_fn'),
    reader: Number(/reader=(\d+)/.exec(out)![1]),
    sleeperTid: Number(/sleeper_tid=(\d+)/.exec(out)![1]),
  };
  // Every spinner has counted (slow to start on a loaded machine), the reader and sleeper wait.
  for (let i = 0; i < 1000 && !readCounters(t.pid, l.counters, spinners).every((c) => c > 0n); i++) await pause(10);
  for (let i = 0; i < 1000 && !(await blocked(t.pid, l.reader, '0 ')); i++) await pause(10);
  return l;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Synchronous sleep (the hijacked/checked process must not wait for the event loop). */
const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

function readCounters(pid: number, at: bigint, n: number): bigint[] {
  const m = new ProcessMemory(pid, { writable: false });
  try {
    const b = m.read(at, 8 * n);
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return Array.from({ length: n }, (_, i) => dv.getBigUint64(8 * i, true));
  } finally {
    m.close();
  }
}

/** Thread `tid` is in state S inside system call number `nr` ("0 " = read). */
async function blocked(pid: number, tid: number, nr: string): Promise<boolean> {
  try {
    return state(pid, tid) === 'S' && readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').startsWith(nr);
  } catch {
    return false;
  }
}

function state(pid: number, tid: number): string {
  const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  return st.slice(st.lastIndexOf(')') + 2)[0]!;
}

const tasks = (pid: number) => readdirSync(`/proc/${pid}/task`).map(Number);

/** TracerPid of every thread (tasks that vanish meanwhile are left out). */
function tracers(pid: number): number[] {
  const out: number[] = [];
  for (const tid of tasks(pid)) {
    try {
      out.push(Number(/TracerPid:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))![1]));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** Every spinner counter moved between two reads `ms` apart. */
function spinnersMove(pid: number, at: bigint, n: number, ms: number): boolean {
  for (let attempt = 0; attempt < 50; attempt++) {
    const a = readCounters(pid, at, n);
    sleepSync(ms);
    const b = readCounters(pid, at, n);
    if (a.every((x, i) => b[i]! > x)) return true;
  }
  return false;
}

describe('hijackThread', () => {
  it('stops only the thread blocked in read(); the others run; mmap/munmap through it; the read restarts', async () => {
    const l = await launch(3);
    const pid = l.t.pid;
    const fp = hijackThread(pid);
    let mmapMicros = 0;
    try {
      expect(fp.partial).toBe(true);
      expect(fp.threads.map((x) => x.tid)).toEqual([l.reader]);
      expect(fp.threads[0]!.inSyscall).toBe(true);
      expect(fp.getRegisters(l.reader).get('orig_rax')).toBe(0n); // SYS_read
      expect(state(pid, l.reader)).toBe('t');
      for (const tid of tasks(pid)) if (tid !== l.reader) expect(state(pid, tid)).not.toBe('t');
      // The spinners keep counting while the reader is stopped.
      expect(spinnersMove(pid, l.counters, 3, 20)).toBe(true);
      const a0 = process.hrtime.bigint();
      const addr = remoteMmap(fp, 0n, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      mmapMicros = Number(process.hrtime.bigint() - a0) / 1000;
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).toContain(`${addr.toString(16)}-`);
      fp.writeMemory(addr, new Uint8Array([1, 2, 3, 4]));
      expect([...fp.readMemory(addr, 4)]).toEqual([1, 2, 3, 4]);
      expect(spinnersMove(pid, l.counters, 3, 20)).toBe(true);
      remoteMunmap(fp, addr, 4096);
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).not.toContain(`${addr.toString(16)}-`);
    } finally {
      fp.thaw();
    }
    console.log(`hijack: stop ${fp.pauseMicros.toFixed(0)} µs (mmap ${mmapMicros.toFixed(0)} µs) of thread ${l.reader}`);
    expect(tracers(pid).every((x) => x === 0)).toBe(true);
    // The interrupted read() was restarted: it gets the data written afterwards.
    await ask(l.t, 'write hello-after-hijack', /got hello-after-hijack/);
    await ask(l.t, 'write second', /got second/);
    await ask(l.t, 'ping', /pong/);
    await l.t.kill();
  });

  it('engine hijack(): the Frozen view with one thread; threadsUsing refuses', async () => {
    const l = await launch(2);
    const f = hijack(l.t.pid, 1000);
    try {
      expect(f.threadCount).toBe(1);
      expect(() => f.threadsUsing([l.spin])).toThrow(expect.objectContaining({ code: PROCESS_NOT_FROZEN }));
      const a = f.mapWritable(8192);
      f.write(a, new Uint8Array([7, 7]));
      expect([...f.read(a, 2)]).toEqual([7, 7]);
      f.unmap(a, 8192);
    } finally {
      expect(f.thaw()).toBeGreaterThan(0);
    }
    expect(tracers(l.t.pid).every((x) => x === 0)).toBe(true);
    await ask(l.t, 'write x1', /got x1/);
    await l.t.kill();
  });

  it('a clone by the stopped thread: the auto-attached child is detached at thaw', async () => {
    const l = await launch(1);
    await ask(l.t, 'churn', /creator=\d+/);
    const creator = Number(/creator=(\d+)/.exec(l.t.output())![1]);
    let clones = 0;
    for (let i = 0; i < 300; i++) {
      const fp = freezeProcess(l.t.pid, { threads: [creator] });
      try {
        expect(fp.threads.map((x) => x.tid)).toEqual([creator]);
        if (fp.threads[0]!.stop === 'clone') clones++;
      } finally {
        fp.thaw();
      }
    }
    console.log(`clone stops caught: ${clones} of 300`);
    expect(tracers(l.t.pid).every((x) => x === 0)).toBe(true);
    const c0 = Number((await ask(l.t, 'count', /count \d+/)).slice(6));
    await pause(50);
    let c1 = c0;
    for (let i = 0; i < 200 && c1 === c0; i++) {
      await pause(10);
      c1 = Number((await ask(l.t, 'count', /count \d+/)).slice(6));
    }
    expect(c1).toBeGreaterThan(c0); // the creator still creates and joins threads
    await l.t.kill();
  });
});

describe('rollingThreadsUsing', () => {
  it('finds the spinners in spin_loop (rip) and the sleeper via its return address; not other_fn', async () => {
    const l = await launch(3);
    const pid = l.t.pid;
    const stops: number[] = [];
    const before = readCounters(pid, l.counters, 3);
    const t0 = process.hrtime.bigint();
    const r = rollingThreadsUsing(pid, [l.spin, l.sleeper, l.other], { onThreadChecked: (_tid, us) => stops.push(us) });
    const totalMicros = Number(process.hrtime.bigint() - t0) / 1000;
    expect(r.inUse).toEqual([true, true, false]);
    const spinTids = new Set(r.uses.filter((u) => u.rangeIndex === 0 && u.kind === 'rip').map((u) => u.tid));
    expect(spinTids.size).toBe(3);
    expect(r.uses.some((u) => u.rangeIndex === 1 && u.kind === 'stack' && u.tid === l.sleeperTid)).toBe(true);
    expect(r.uses.some((u) => u.rangeIndex === 2)).toBe(false);
    const n = tasks(pid).length; // main, reader, sleeper, 3 spinners
    expect(r.threadsChecked).toBe(n);
    expect(stops).toHaveLength(n);
    expect(r.longestStopMicros).toBe(Math.max(...stops));
    expect(r.threadsUnchecked).toBe(0);
    // One thread at a time: each stop is a fraction of the whole check.
    expect(r.longestStopMicros).toBeLessThan(totalMicros);
    expect(stops.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(totalMicros);
    console.log(`rolling check of ${n} threads: longest stop ${r.longestStopMicros.toFixed(0)} µs, whole check ${totalMicros.toFixed(0)} µs`);
    expect(tracers(pid).every((x) => x === 0)).toBe(true);
    const after = readCounters(pid, l.counters, 3);
    expect(after.every((x, i) => x > before[i]!)).toBe(true);
    expect(spinnersMove(pid, l.counters, 3, 20)).toBe(true);
    await ask(l.t, 'write still-reading', /got still-reading/);
    // The engine wrapper reports the same.
    const e = rollingCheck(pid, [l.spin, l.sleeper, l.other], 1000);
    expect(e.inUse).toEqual([true, true, false]);
    expect(e.uses.some((u) => u.tid === l.sleeperTid && u.how === 'return-address' && u.rangeIndex === 1)).toBe(true);
    expect(e.threadsChecked).toBe(n);
    await l.t.kill();
  });

  it('threads off their CPU are checked without a stop (the reader is not even woken); running ones are stopped, or left with stopRunning: false', async () => {
    const l = await launch(2);
    const pid = l.t.pid;
    const path = await prog();
    // `reader` (static) at run time: its link-time distance from sleeper_fn is kept.
    const nmAddr = (name: string) => BigInt(`0x${execFileSync('nm', ['--defined-only', path], { encoding: 'utf8' }).split('\n').find((x) => x.endsWith(` ${name}`))!.split(' ')[0]}`);
    const readerFn = range(path, l.sleeper.start - nmAddr('sleeper_fn') + nmAddr('reader'), 'reader');
    const switches = () => readFileSync(`/proc/${pid}/task/${l.reader}/status`, 'utf8').match(/ctxt_switches:\s*\d+/g)!.join();
    const before = switches();
    const stops = new Map<number, number>();
    const r = rollingThreadsUsing(pid, [readerFn, l.spin, l.other], { onThreadChecked: (tid, us) => stops.set(tid, us) });
    expect(r.inUse).toEqual([true, true, false]);
    // The reader, blocked in read() called from reader(): its return address, seen through /proc.
    expect(r.uses.some((u) => u.tid === l.reader && u.rangeIndex === 0 && u.kind === 'stack')).toBe(true);
    expect(stops.get(l.reader)).toBe(0);
    expect(switches()).toBe(before); // a ptrace stop would have woken it
    // The spinners never leave their CPU (or its run queue): stopped, found by rip.
    const spinners = new Set(r.uses.filter((u) => u.rangeIndex === 1 && u.kind === 'rip').map((u) => u.tid));
    expect(spinners.size).toBe(2);
    for (const tid of spinners) expect(stops.get(tid)).toBeGreaterThan(0);
    expect(r.threadsNotStopped).toBe([...stops.values()].filter((us) => us === 0).length);
    expect(r.threadsNotStopped).toBeGreaterThanOrEqual(1);
    expect(r.threadsChecked).toBe(tasks(pid).length);
    // A check that stops nothing: the spinners stay unchecked and count as using every range.
    const passive = rollingThreadsUsing(pid, [readerFn, l.other], { stopRunning: false });
    expect(passive.threadsRunning).toBeGreaterThanOrEqual(2);
    expect(passive.longestStopMicros).toBe(0);
    expect(passive.inUse).toEqual([true, true]);
    expect(tracers(pid).every((x) => x === 0)).toBe(true);
    await ask(l.t, 'write after-passive', /got after-passive/);
    await l.t.kill();
  });

  it('checks threads created during the check', async () => {
    const l = await launch(2);
    const pid = l.t.pid;
    const initial = new Set(tasks(pid));
    l.t.child.stdin!.write('spawn 4\n');
    await pause(0);
    const checked: number[] = [];
    const r = rollingThreadsUsing(pid, [l.spin], {
      onThreadChecked(tid) {
        // Hold the first round until the target has created a thread.
        if (checked.length === 0) for (let i = 0; i < 1000 && tasks(pid).every((x) => initial.has(x)); i++) sleepSync(10);
        checked.push(tid);
      },
    });
    expect(r.rounds).toBeGreaterThanOrEqual(2);
    expect(checked.some((tid) => !initial.has(tid))).toBe(true);
    expect(r.threadsChecked).toBe(checked.length);
    expect(new Set(checked).size).toBe(checked.length); // each thread once
    await l.t.waitFor('spawned 4');
    expect(tracers(pid).every((x) => x === 0)).toBe(true);
    await l.t.kill();
  });

  it('a pid that does not exist, a zombie, a process that exits during the check: typed errors, nothing attached', async () => {
    const c = spawn('true');
    const dead = c.pid!;
    await new Promise((res) => c.once('exit', res));
    expect(() => rollingThreadsUsing(dead, [])).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));
    expect(() => hijackThread(dead)).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));

    const z = await startTarget(await compile({ file: 'process-control/zombie.c', flags: ['-O2'] }));
    const child = Number(/child=(\d+)/.exec(z.output())![1]);
    for (let i = 0; i < 500 && state(child, child) !== 'Z'; i++) await pause(10);
    expect(() => rollingThreadsUsing(child, [])).toThrow(expect.objectContaining({ code: 'PROCESS_ZOMBIE' }));
    expect(() => hijackThread(child)).toThrow(expect.objectContaining({ code: 'PROCESS_ZOMBIE' }));
    expect(state(child, child)).toBe('Z');
    expect(tracers(child)).toEqual([0]);
    await z.kill();

    const l = await launch(3);
    let first = true;
    expect(() =>
      rollingThreadsUsing(l.t.pid, [l.spin], {
        onThreadChecked() {
          if (!first) return;
          first = false;
          process.kill(l.t.pid, 'SIGKILL');
          for (let i = 0; i < 500 && tasks(l.t.pid).length > 1; i++) sleepSync(2);
        },
      }),
    ).toThrow(expect.objectContaining({ code: PROCESS_EXITED }));
    expect(pendingDetaches()).toBe(0);
    await l.t.kill();
  });
});
