/**
 * A target killed (SIGKILL, by someone else) while we have it frozen and are injecting system
 * calls: the patcher fails promptly with a typed error and never hangs — in particular not in a
 * wait on the thread-group leader, whose exit is reported only after its traced threads are reaped.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ProcessError } from '../../src/errors.js';
import { freezeProcess, SYS_getpid } from '../../src/process/control/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';

killTargetsAfterAll();

describe('a target that dies while frozen', () => {
  it('injections into a target SIGKILLed mid-way end in a ProcessError within seconds', async () => {
    const exe = await compile({ file: 'process-control/threads.c', flags: ['-O2', '-g', '-DDYING_TEST'] });
    for (const delayMs of [0, 2, 5, 20]) {
      // Not our child (like a real target): started through a shell that exits.
      const sh = await startTarget('/bin/sh', ['-c', `${exe} 8 > /dev/null & echo pid=$!; wait`], { readyText: /pid=\d+/ });
      const pid = Number(/pid=(\d+)/.exec(sh.output())![1]);
      await new Promise((r) => setTimeout(r, 300));
      const started = Date.now();
      let error: unknown;
      try {
        const f = freezeProcess(pid);
        try {
          // The killer is another process: this loop blocks our event loop, not the kill.
          spawn('sh', ['-c', `sleep ${delayMs / 1000}; kill -9 ${pid}`], { stdio: 'ignore', detached: true });
          for (let i = 0; i < 1_000_000; i++) f.injectSyscall(SYS_getpid, [], { tid: pid }); // the group leader
        } finally {
          f.thaw();
        }
      } catch (e) {
        error = e;
      }
      expect(error, `delay ${delayMs} ms`).toBeInstanceOf(ProcessError);
      expect(Date.now() - started, `delay ${delayMs} ms`).toBeLessThan(15_000);
      await sh.kill();
    }
  });
});
