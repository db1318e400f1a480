import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  freezeProcess,
  MemoryMismatchError,
  PROCESS_ALREADY_TRACED,
  PROCESS_EXITED,
  PROCESS_NOT_FROZEN,
  type FrozenProcess,
} from '../../src/process/control/index.js';
import { parseMaps } from '../../src/process/inspect/procfs.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';

killTargetsAfterAll();

const threadsProg = () => compile({ file: 'process-control/threads.c', flags: ['-O2'] });

/** Sends a command line and waits for the reply line matching `re` that appears after it. */
async function ask(t: Target, cmd: string, re: RegExp): Promise<RegExpExecArray> {
  const before = t.output().length;
  t.child.stdin!.write(`${cmd}\n`);
  const tail = () => t.output().slice(before);
  await t.waitFor({ test: () => re.test(tail()) } as unknown as RegExp, 5000);
  return re.exec(tail())!;
}

function tracerOf(pid: number): number {
  return Number(/TracerPid:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

function withFrozen<T>(pid: number, fn: (f: FrozenProcess) => T): T {
  const f = freezeProcess(pid);
  try {
    return fn(f);
  } finally {
    f.thaw();
  }
}

describe('freezeProcess / thaw', () => {
  for (const n of [1, 8, 64]) {
    it(`freezes and thaws a process with ${n} thread(s); they keep running`, async () => {
      const t = await startTarget(await threadsProg(), [String(n)]);
      const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(t.output())![1]!);
      const text = parseMaps(readFileSync(`/proc/${t.pid}/maps`, 'utf8')).find(
        (m) => m.protection.execute && valueFn >= m.start && valueFn < m.end,
      )!;
      // Wait until every worker runs its loop (slow to start on a loaded machine).
      await ask(t, 'mark', /marked/);
      for (let i = 0; i < 500; i++) {
        await new Promise((r) => setTimeout(r, 20));
        if (Number((await ask(t, 'since', /since (\d+)/))[1]) === n - 1) break;
      }
      for (let round = 0; round < 3; round++) {
        // The main thread may still be finishing its answer's write(): wait until it is back in read().
        for (let i = 0; i < 500 && !readFileSync(`/proc/${t.pid}/syscall`, 'utf8').startsWith('0 '); i++) await new Promise((r) => setTimeout(r, 10));
        const f = freezeProcess(t.pid);
        try {
          expect(f.isFrozen).toBe(true);
          const tids = f.threads.map((x) => x.tid).sort((a, b) => a - b);
          expect(tids).toEqual(readdirSync(`/proc/${t.pid}/task`).map(Number).sort((a, b) => a - b));
          expect(tids).toHaveLength(n);
          expect(f.threads[0]!.tid).toBe(t.pid);
          // Every thread is in a ptrace-stop while frozen.
          for (const x of f.threads) {
            const st = readFileSync(`/proc/${t.pid}/task/${x.tid}/stat`, 'utf8');
            expect(st.slice(st.lastIndexOf(')') + 2)[0]).toBe('t');
            expect(x.stop).toBe('interrupt');
          }
          // Workers spin in worker(): their rip is inside the program's text.
          if (n > 1) {
            const inText = f.threads.filter((x) => x.regs.rip >= text.start && x.regs.rip < text.end);
            expect(inText.length).toBeGreaterThanOrEqual(n - 1);
          }
          // rsp is inside a mapping of the process and the main thread waits in read().
          expect(f.threads[0]!.inSyscall).toBe(true);
          expect(f.getRegisters(t.pid).get('orig_rax')).toBe(0n); // SYS_read
          expect(tracerOf(t.pid)).toBe(process.pid);
        } finally {
          const pause = f.thaw();
          expect(pause).toBeGreaterThan(0);
          expect(f.pauseMicros).toBe(pause);
        }
        expect(f.isFrozen).toBe(false);
        expect(f.thaw()).toBe(f.pauseMicros); // idempotent
        expect(() => f.readMemory(valueFn, 1)).toThrow(expect.objectContaining({ code: PROCESS_NOT_FROZEN }));
        expect(tracerOf(t.pid)).toBe(0);
      }
      // All workers still count (each gets the CPU eventually, even on a loaded machine), the main
      // thread still answers.
      await ask(t, 'mark', /marked/);
      let moved = 0;
      for (let i = 0; i < 500 && moved < n - 1; i++) {
        await new Promise((r) => setTimeout(r, 20));
        moved = Number((await ask(t, 'since', /since (\d+)/))[1]);
      }
      expect(moved).toBe(n - 1);
      await ask(t, 'value', /value 1\b/);
      await t.kill();
    });
  }

  it('writes into r-x text and changes behaviour; writeMemoryChecked refuses a mismatch', async () => {
    const t = await startTarget(await threadsProg(), ['4']);
    const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    await ask(t, 'value', /value 1\b/);
    const original = withFrozen(t.pid, (f) => f.readMemory(valueFn, 6));
    // value() is `mov eax, 1; ret` (possibly after endbr64).
    const movAt = original[0] === 0xb8 ? 0 : -1;
    expect(movAt).toBe(0);
    expect([...original]).toEqual([0xb8, 1, 0, 0, 0, 0xc3]);
    // A mismatching expectation writes nothing.
    withFrozen(t.pid, (f) => {
      expect(() => f.writeMemoryChecked(valueFn + 1n, new Uint8Array([2, 0, 0, 0]), new Uint8Array([9, 0, 0, 0]))).toThrow(
        MemoryMismatchError,
      );
      expect([...f.readMemory(valueFn, 6)]).toEqual([...original]);
    });
    await ask(t, 'value', /value 1\b/);
    withFrozen(t.pid, (f) => f.writeMemoryChecked(valueFn + 1n, new Uint8Array([1, 0, 0, 0]), new Uint8Array([42, 0, 0, 0])));
    await ask(t, 'value', /value 42\b/);
    withFrozen(t.pid, (f) => f.writeMemory(valueFn, original));
    await ask(t, 'value', /value 1\b/);
    // The page is still r-x (no mprotect happened) and the file on disk is unchanged.
    const m = parseMaps(readFileSync(`/proc/${t.pid}/maps`, 'utf8')).find((x) => valueFn >= x.start && valueFn < x.end)!;
    expect(m.perms).toBe('r-xp');
    await t.kill();
  });

  it('catches threads created in a loop while it attaches', async () => {
    const prog = await compile({ file: 'process-control/churn.c', flags: ['-O2'] });
    const t = await startTarget(prog, ['3']);
    for (let i = 0; i < 15; i++) {
      const f = freezeProcess(t.pid);
      try {
        // While frozen nobody can create or end a thread: the task list is exactly what we hold.
        const listed = readdirSync(`/proc/${t.pid}/task`).map(Number);
        const live = listed.filter((tid) => {
          const st = readFileSync(`/proc/${t.pid}/task/${tid}/stat`, 'utf8');
          return st.slice(st.lastIndexOf(')') + 2)[0] !== 'Z';
        });
        expect(f.threads.map((x) => x.tid).sort((a, b) => a - b)).toEqual(live.sort((a, b) => a - b));
        expect(f.threads.length).toBeGreaterThanOrEqual(4);
        expect(tracerOf(t.pid)).toBe(process.pid);
      } finally {
        f.thaw();
      }
    }
    expect(t.child.exitCode).toBe(null);
    await t.kill();
  });

  it('keeps a stopped (SIGSTOP) process stopped after thaw', async () => {
    const t = await startTarget(await threadsProg(), ['3']);
    process.kill(t.pid, 'SIGSTOP');
    await new Promise((r) => setTimeout(r, 50));
    const f = freezeProcess(t.pid);
    expect(f.threads.every((x) => x.stop === 'group-stop')).toBe(true);
    f.thaw();
    await new Promise((r) => setTimeout(r, 50));
    expect(readFileSync(`/proc/${t.pid}/stat`, 'utf8').split(') ')[1]![0]).toBe('T');
    process.kill(t.pid, 'SIGCONT');
    await ask(t, 'value', /value 1\b/);
    await t.kill();
  });
});

describe('freezeProcess refusals (target left untouched)', () => {
  it('refuses when another tracer holds one (not the first) thread, stopped, naming it; no thread left stopped or attached', async () => {
    const t = await startTarget(await threadsProg(), ['3']);
    const tids = readdirSync(`/proc/${t.pid}/task`).map(Number).filter((x) => x !== t.pid).sort((a, b) => a - b);
    const victim = tids[tids.length - 1]!;
    const tracerProg = await compile({ file: 'process-control/tracer.c', flags: ['-O2'] });
    const tracer = await startTarget(tracerProg, [String(victim)]);
    try {
      const taskStatus = (tid: number) => readFileSync(`/proc/${t.pid}/task/${tid}/status`, 'utf8');
      expect(/TracerPid:\s+(\d+)/.exec(taskStatus(victim))![1]).toBe(String(tracer.pid));
      expect(tracerOf(t.pid)).toBe(0); // the leader is not traced: only a per-thread look finds it
      for (const stopIt of [false, true]) {
        // A tracee the other tracer stopped (group-stop of the traced thread: it blocks any freeze).
        if (stopIt) process.kill(t.pid, 'SIGSTOP');
        let err: unknown;
        try {
          freezeProcess(t.pid, { timeoutMs: 500 }).thaw();
        } catch (e) {
          err = e;
        }
        expect(err, `stopped=${stopIt}`).toMatchObject({ code: PROCESS_ALREADY_TRACED });
        const msg = (err as Error).message;
        expect(msg).toContain(`thread ${victim}`);
        expect(msg).toContain(String(tracer.pid));
        expect(msg).toMatch(/\(prog\)|\(tracer/); // the tracer's command name
        // Nothing of ours is left: no other thread traced by us or stopped by us.
        for (const tid of readdirSync(`/proc/${t.pid}/task`).map(Number)) {
          if (tid === victim) continue;
          expect(/TracerPid:\s+(\d+)/.exec(taskStatus(tid))![1]).toBe('0');
          if (!stopIt) expect(/State:\s+(\S)/.exec(taskStatus(tid))![1]).not.toMatch(/[tT]/);
        }
        if (stopIt) process.kill(t.pid, 'SIGCONT');
      }
      await ask(t, 'value', /value 1\b/);
    } finally {
      await tracer.kill();
      await t.kill();
    }
  });

  it('refuses a process traced by another tracer, naming it', async () => {
    const t = await startTarget(await threadsProg(), ['2']);
    const tracerProg = await compile({ file: 'process-control/tracer.c', flags: ['-O2'] });
    const tracer = await startTarget(tracerProg, [String(t.pid)]);
    const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    expect(tracerOf(t.pid)).toBe(tracer.pid);
    let err: unknown;
    try {
      freezeProcess(t.pid).thaw();
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: PROCESS_ALREADY_TRACED });
    expect((err as Error).message).toContain(String(tracer.pid));
    expect(tracerOf(t.pid)).toBe(tracer.pid);
    // Untouched: still running and answering, code unchanged.
    await ask(t, 'value', /value 1\b/);
    const [, adv] = await ask(t, 'check', /advanced (\d+)/);
    expect(Number(adv)).toBeGreaterThanOrEqual(0);
    const stat = readFileSync(`/proc/${t.pid}/stat`, 'utf8');
    expect(stat.slice(stat.lastIndexOf(')') + 2)[0]).not.toBe('t');
    expect(valueFn).toBeGreaterThan(0n);
    await tracer.kill();
    await t.kill();
  });

  it('refuses a pid that does not exist', async () => {
    const c = spawn('true');
    const pid = c.pid!;
    await new Promise((r) => c.once('exit', r));
    expect(() => freezeProcess(pid)).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));
  });

  it('refuses a zombie', async () => {
    const t = await startTarget(await compile({ file: 'process-control/zombie.c', flags: ['-O2'] }));
    const child = Number(/child=(\d+)/.exec(t.output())![1]);
    for (let i = 0; i < 500 && !/\) Z /.test(readFileSync(`/proc/${child}/stat`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 10));
    expect(readFileSync(`/proc/${child}/stat`, 'utf8')).toMatch(/\) Z /);
    expect(() => freezeProcess(child)).toThrow(expect.objectContaining({ code: 'PROCESS_ZOMBIE' }));
    expect(readFileSync(`/proc/${child}/stat`, 'utf8')).toMatch(/\) Z /);
    await t.kill();
  });

  it('refuses a kernel thread, a thread id and itself', async () => {
    expect(() => freezeProcess(2)).toThrow(expect.objectContaining({ code: 'PROCESS_KERNEL_THREAD' }));
    expect(() => freezeProcess(process.pid)).toThrow(expect.objectContaining({ code: 'PROCESS_IS_SELF' }));
    const t = await startTarget(await threadsProg(), ['2']);
    const worker = readdirSync(`/proc/${t.pid}/task`).map(Number).find((x) => x !== t.pid)!;
    expect(() => freezeProcess(worker)).toThrow(expect.objectContaining({ code: 'PROCESS_IS_THREAD' }));
    await t.kill();
  });

  it('refuses with PROCESS_PERMISSION_DENIED when not allowed to trace', async () => {
    // Target owned by uid/gid 65533; we keep real uid 0 but take effective uid/gid 65533 (which
    // drops every effective capability, CAP_SYS_PTRACE included): PTRACE_SEIZE checks the real
    // uid and fails with EPERM, while /proc/PID/mem (checked with the fs uid/gid) still opens.
    const prog = await threadsProg();
    const child = spawn(prog, ['2'], { uid: 65533, gid: 65533, stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      for (let i = 0; i < 500 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 10));
      expect(out).toContain('ready');
      let err: unknown;
      process.setegid(65533);
      process.seteuid(65533);
      try {
        freezeProcess(child.pid!).thaw();
      } catch (e) {
        err = e;
      } finally {
        process.seteuid(0);
        process.setegid(0);
      }
      expect(process.geteuid()).toBe(0);
      expect(process.getegid()).toBe(0);
      expect(err).toMatchObject({ code: 'PROCESS_PERMISSION_DENIED' });
      expect((err as Error).message).toContain('not allowed to ptrace'); // PTRACE_SEIZE's EPERM
      expect(tracerOf(child.pid!)).toBe(0);
      // Still running and answering.
      out = '';
      child.stdin!.write('value\n');
      for (let i = 0; i < 500 && !out.includes('value 1'); i++) await new Promise((r) => setTimeout(r, 10));
      expect(out).toContain('value 1');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('reports PROCESS_EXITED when the process dies while frozen, and thaw still succeeds', async () => {
    const t = await startTarget(await threadsProg(), ['4']);
    const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    const f = freezeProcess(t.pid);
    process.kill(t.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 50));
    let err: unknown;
    try {
      f.injectSyscall(39 /* getpid */);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: PROCESS_EXITED });
    expect(() => f.readMemory(valueFn, 1)).toThrow();
    expect(() => f.thaw()).not.toThrow();
    // Node still sees its child's exit (we did not steal the exit status).
    await t.kill();
    expect(t.child.signalCode).toBe('SIGKILL');
  });

  it('never hangs or misreports on a process that exits during the attach', async () => {
    const prog = await compile({
      source: '#include <pthread.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n' +
        'static void *spin(void *a){(void)a;for(;;);return 0;}\n' +
        'int main(int c,char**v){setvbuf(stdout,0,_IOLBF,0);for(int i=0;i<8;i++){pthread_t t;pthread_create(&t,0,spin,0);}' +
        'printf("ready\\n");usleep(atoi(v[1]));exit(0);}\n',
      flags: ['-O2'],
    });
    const codes = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const t = await startTarget(prog, [String(i * 300)]);
      try {
        freezeProcess(t.pid).thaw();
        codes.add('ok');
      } catch (e) {
        codes.add((e as { code: string }).code);
      }
      await new Promise((r) => setTimeout(r, 1));
      await t.kill();
    }
    for (const c of codes) expect(['ok', PROCESS_EXITED, 'PROCESS_NOT_FOUND', 'PROCESS_ZOMBIE']).toContain(c);
  });
});

describe('threads that cannot stop', () => {
  it('times out on a thread in uninterruptible sleep (vfork parent), then releases it when it can stop', async () => {
    const { pendingDetaches } = await import('../../src/process/control/index.js');
    const t = await startTarget(await compile({ file: 'process-control/vfork.c', flags: ['-O2'] }), ['2500']);
    const forker = Number(/forker (\d+)/.exec(t.output())![1]);
    const stat = readFileSync(`/proc/${t.pid}/task/${forker}/stat`, 'utf8');
    expect(stat.slice(stat.lastIndexOf(')') + 2)[0]).toBe('D');
    let err: unknown;
    try {
      freezeProcess(t.pid, { timeoutMs: 300 }).thaw();
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'PROCESS_FREEZE_TIMEOUT' });
    expect((err as Error).message).toContain(String(forker));
    // The other threads were released at once.
    t.child.stdin!.write('hello\n');
    await t.waitFor('echo hello');
    // The vfork parent is released when its child exits: it prints and nothing stays traced.
    await t.waitFor('vfork done', 10_000);
    for (let i = 0; i < 100 && pendingDetaches() > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(pendingDetaches()).toBe(0);
    expect(tracerOf(t.pid)).toBe(0);
    const st = readFileSync(`/proc/${t.pid}/task/${forker}/status`, 'utf8');
    expect(/TracerPid:\s*0/.test(st)).toBe(true);
    await t.kill();
  });
});
