import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  allocateNear,
  findThreadsUsing,
  freezeProcess,
  MAP_ANONYMOUS,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  RemoteSyscallError,
  remoteMmap,
  remoteMprotect,
  remoteMunmap,
  SYS_getpid,
  SYS_gettid,
  type FrozenProcess,
} from '../../src/process/control/index.js';
import { parseMaps, type Mapping } from '../../src/process/inspect/procfs.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';

killTargetsAfterAll();

// Not the flags freeze.test.ts uses: test files run in parallel and the shared compile cache
// (test/helpers/native.ts) races when two of them build the same program at once.
const THREADS_FLAGS = ['-O2', '-g'];

function maps(pid: number): Mapping[] {
  return parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

function withFrozen<T>(pid: number, fn: (f: FrozenProcess) => T, options = {}): T {
  const f = freezeProcess(pid, options);
  try {
    return fn(f);
  } finally {
    f.thaw();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('injected system calls', () => {
  it('runs getpid/gettid in the chosen thread and restores every register', async () => {
    const t = await startTarget(await compile({ file: 'process-control/threads.c', flags: THREADS_FLAGS }), ['3']);
    withFrozen(t.pid, (f) => {
      const before = f.threads.map((x) => [...x.regs.words]);
      expect(f.injectSyscall(SYS_getpid)).toBe(BigInt(t.pid));
      for (const x of f.threads) expect(f.injectSyscall(SYS_gettid, [], { tid: x.tid })).toBe(BigInt(x.tid));
      // Registers as the threads will resume with them: unchanged.
      f.threads.forEach((x, i) => expect([...f.getRegisters(x.tid).words]).toEqual(before[i]));
    });
    t.child.stdin!.write('value\n');
    await t.waitFor('value 1');
    await t.kill();
  });

  it('a signal that arrives while frozen is delivered exactly once after thaw, even across injections', async () => {
    const t = await startTarget(await compile({ file: 'process-control/threads.c', flags: THREADS_FLAGS }), ['3']);
    t.child.stdin!.write('sigs\n');
    await t.waitFor('sigs 0');
    withFrozen(t.pid, (f) => {
      process.kill(t.pid, 'SIGUSR1');
      // Every thread steps through an injected call; one of them dequeues the signal on the way
      // (signal-delivery-stop): it must be kept and handed back, not swallowed.
      for (const x of f.threads) expect(f.injectSyscall(SYS_gettid, [], { tid: x.tid })).toBe(BigInt(x.tid));
    });
    await sleep(50);
    t.child.stdin!.write('sigs\n');
    await t.waitFor('sigs 1');
    t.child.stdin!.write('value\n');
    await t.waitFor('value 1');
    await t.kill();
  });

  it('mmap, mprotect and munmap appear in /proc/PID/maps with the right permissions; errors are decoded', async () => {
    const t = await startTarget(await compile({ file: 'process-control/threads.c', flags: THREADS_FLAGS }), ['2']);
    const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    const size = 3 * 4096;
    const addr = withFrozen(t.pid, (f) => {
      const a = allocateNear(f, valueFn, size);
      const d = a.address > valueFn ? a.address + BigInt(a.size) - valueFn : valueFn - a.address;
      expect(d).toBeLessThan(2n ** 31n);
      expect(a.size).toBe(size);
      // Writable: put code there through /proc/PID/mem, then flip to r-x.
      f.writeMemory(a.address, new Uint8Array([0xb8, 7, 0, 0, 0, 0xc3]));
      return a.address;
    });
    let m = maps(t.pid).find((x) => x.start === addr)!;
    expect(m).toBeDefined();
    expect(m.end - m.start).toBe(BigInt(size));
    expect(m.perms).toBe('rw-p');
    withFrozen(t.pid, (f) => {
      remoteMprotect(f, addr, size, PROT_READ | PROT_EXEC);
      expect([...f.readMemory(addr, 6)]).toEqual([0xb8, 7, 0, 0, 0, 0xc3]);
      // Mapping over it without replacing fails with EEXIST.
      let err: unknown;
      try {
        remoteMmap(f, addr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RemoteSyscallError);
      expect(err).toMatchObject({ code: 'PROCESS_REMOTE_SYSCALL_FAILED', errno: 17, errnoName: 'EEXIST', syscall: 'mmap' });
      // Misaligned munmap: EINVAL.
      expect(() => remoteMunmap(f, addr + 1n, 4096)).toThrow(expect.objectContaining({ errnoName: 'EINVAL' }));
      // W+X is requested by nobody here, but mprotect works on any protection the kernel allows.
      remoteMprotect(f, addr, 4096, PROT_READ);
    });
    m = maps(t.pid).find((x) => x.start === addr)!;
    expect(m.perms).toBe('r--p');
    expect(maps(t.pid).find((x) => x.start === addr + 4096n)!.perms).toBe('r-xp');
    withFrozen(t.pid, (f) => remoteMunmap(f, addr, size));
    expect(maps(t.pid).some((x) => x.start < addr + BigInt(size) && x.end > addr)).toBe(false);
    // The program is unaffected.
    t.child.stdin!.write('value\n');
    await t.waitFor('value 1');
    await t.kill();
  });

  it('allocateNear finds room near a module and never replaces a mapping', async () => {
    const t = await startTarget(await compile({ file: 'process-control/threads.c', flags: THREADS_FLAGS }), ['1']);
    const before = maps(t.pid);
    const libc = before.find((m) => /libc\.so/.test(m.path) && m.protection.execute)!;
    const allocs = withFrozen(t.pid, (f) => [1, 2, 3].map(() => allocateNear(f, libc.start, 100)));
    const after = maps(t.pid);
    for (const a of allocs) {
      expect(a.size).toBe(4096);
      const m = after.find((x) => x.start === a.address)!;
      expect(m.perms).toBe('rw-p');
      const d = a.address > libc.start ? a.address - libc.start : libc.start - a.address;
      expect(d).toBeLessThan(2n ** 31n);
      // Not overlapping anything that existed before.
      expect(before.some((x) => x.start < a.address + 4096n && x.end > a.address)).toBe(false);
    }
    withFrozen(t.pid, (f) => allocs.forEach((a) => remoteMunmap(f, a.address, a.size)));
    expect(maps(t.pid)).toHaveLength(before.length);
    await t.kill();
  });
});

describe('threads blocked in system calls behave as before after an injection', () => {
  const SLEEP_MS = 3000;

  async function start(): Promise<{ t: Target; tids: Record<string, number> }> {
    const t = await startTarget(await compile({ file: 'process-control/blocked.c', flags: ['-O2'] }), [String(SLEEP_MS)]);
    const tids: Record<string, number> = {};
    for (const m of t.output().matchAll(/tid (\w+) (\d+)/g)) tids[m[1]!] = Number(m[2]);
    expect(Object.keys(tids).sort()).toEqual(['accept', 'epoll', 'futex', 'nanosleep', 'read']);
    // Wait until each thread is blocked in its call (/proc/PID/task/TID/syscall starts with the number).
    const nr: Record<string, number> = { read: 0, epoll: 232, nanosleep: 35, futex: 202, accept: 43 };
    for (const [name, tid] of Object.entries(tids)) {
      for (let i = 0; i < 1000; i++) {
        const sc = readFileSync(`/proc/${t.pid}/task/${tid}/syscall`, 'utf8').split(' ')[0];
        const st = readFileSync(`/proc/${t.pid}/task/${tid}/stat`, 'utf8');
        if (sc === String(nr[name]) && st.slice(st.lastIndexOf(')') + 2)[0] === 'S') break;
        await sleep(10);
      }
    }
    return { t, tids };
  }

  function injectEverywhere(f: FrozenProcess, tids: Record<string, number>): void {
    for (const [name, tid] of Object.entries(tids)) {
      const th = f.thread(tid);
      // Each thread is stopped inside its blocking call.
      expect(th.inSyscall, name).toBe(true);
      const a = remoteMmap(f, 0n, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n, { tid });
      remoteMprotect(f, a, 4096, PROT_READ, { tid });
      remoteMunmap(f, a, 4096, { tid });
      expect(f.injectSyscall(SYS_gettid, [], { tid })).toBe(BigInt(tid));
    }
  }

  it('read, epoll_wait, nanosleep, futex and accept: restarted, no EINTR, sleep keeps its deadline', async () => {
    const { t, tids } = await start();
    const startedAt = Date.now();
    // Several freezes with injections in every blocked thread, during the sleep.
    for (let i = 0; i < 3; i++) {
      withFrozen(t.pid, (f) => {
        expect(f.thread(tids.nanosleep!).restartPending).toBe(true); // ERESTART_RESTARTBLOCK
        expect(f.thread(tids.read!).restartPending).toBe(true); // ERESTARTSYS
        injectEverywhere(f, tids);
      });
      await sleep(100);
    }
    // Nothing returned early.
    expect(t.output()).not.toMatch(/done/);
    for (const name of ['read', 'epoll', 'futex', 'accept']) {
      t.child.stdin!.write(`wake ${name}\n`);
      await t.waitFor(new RegExp(`done ${name} `));
    }
    await t.waitFor(/done nanosleep /, SLEEP_MS + 10_000);
    const out = t.output();
    expect(out).toMatch(/done read ret=1 errno=0/);
    expect(out).toMatch(/done epoll ret=1 errno=0/);
    expect(out).toMatch(/done futex ret=0 errno=0/);
    expect(out).toMatch(/done accept ret=\d+ errno=0/);
    const m = /done nanosleep ret=(-?\d+) errno=(\d+) elapsed_ms=(\d+)/.exec(out)!;
    expect(m[1]).toBe('0');
    expect(m[2]).toBe('0');
    // Restarted with the remaining time (restart_syscall), not from the beginning: the total
    // stays close to the requested 3 s although three freezes happened after 0, 100, 200 ms.
    const elapsed = Number(m[3]);
    expect(elapsed).toBeGreaterThanOrEqual(SLEEP_MS - 5);
    expect(elapsed).toBeLessThan(SLEEP_MS + 1500);
    expect(Date.now() - startedAt).toBeLessThan(SLEEP_MS + 10_000);
    expect(out).not.toMatch(/errno=4\b/);
    await t.kill();
  });

  it('without restartInterruptedEpoll, epoll_wait reports the EINTR the kernel gives a stopped thread', async () => {
    const { t, tids } = await start();
    withFrozen(t.pid, (f) => expect(f.thread(tids.epoll!).inSyscall).toBe(true), { restartInterruptedEpoll: false });
    await t.waitFor(/done epoll /);
    expect(t.output()).toMatch(/done epoll ret=-1 errno=4/);
    // The others are unaffected by a plain freeze.
    expect(t.output()).not.toMatch(/done (read|futex|accept|nanosleep)/);
    await t.kill();
  });
});

describe('findThreadsUsing', () => {
  it('finds a return address into a marked function and a rip in a spinning one', async () => {
    const prog = await compile({ file: 'process-control/stackscan.c', flags: ['-O2', '-fno-omit-frame-pointer'] });
    const t = await startTarget(prog);
    const out = t.output();
    const addr = (name: string) => BigInt(new RegExp(`${name}=(0x[0-9a-f]+)`).exec(out)![1]!);
    const sleeper = Number(/sleeper (\d+)/.exec(out)![1]);
    const spinner = Number(/spinner (\d+)/.exec(out)![1]);
    // Function sizes from the symbol table (nm -S), relative to the printed run-time address.
    const { execFileSync } = await import('node:child_process');
    const nm = execFileSync('nm', ['-S', prog], { encoding: 'utf8' });
    const size = (name: string) => BigInt(`0x${new RegExp(`^[0-9a-f]+ ([0-9a-f]+) T ${name}$`, 'm').exec(nm)![1]}`);
    const range = (name: string) => ({ start: addr(name), end: addr(name) + size(name) });
    const stats = { threads: 0, bytesScanned: 0 };
    const uses = withFrozen(t.pid, (f) =>
      findThreadsUsing(f, [range('marked'), range('spin'), range('never_called')], { stats }),
    );
    expect(stats.threads).toBe(3);
    expect(stats.bytesScanned).toBeGreaterThan(0);
    const marked = uses.filter((u) => u.rangeIndex === 0);
    expect(marked.some((u) => u.tid === sleeper && u.kind === 'stack')).toBe(true);
    for (const u of marked) {
      expect(u.value >= addr('marked') && u.value < addr('marked') + size('marked')).toBe(true);
      expect(u.where % 8n).toBe(0n);
    }
    const spin = uses.filter((u) => u.rangeIndex === 1);
    expect(spin.some((u) => u.tid === spinner && u.kind === 'rip')).toBe(true);
    expect(uses.filter((u) => u.rangeIndex === 2)).toEqual([]);
    // The slot really holds that value.
    const slot = marked.find((u) => u.kind === 'stack')!;
    const again = withFrozen(t.pid, (f) => f.readMemory(slot.where, 8));
    expect(Buffer.from(again).readBigUInt64LE()).toBe(slot.value);
    await t.kill();
  });
});
