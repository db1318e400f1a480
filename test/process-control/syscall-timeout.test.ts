/**
 * Issue #13 item 9: the limit on an injected system call follows the caller's timeout — quick
 * calls (mmap, mprotect, …) included, which used to have a fixed 2000 ms. A MAP_POPULATE mmap of
 * 256 MiB takes tens of milliseconds in the target: with a 1 ms limit it is interrupted
 * (PROCESS_INJECTION_FAILED naming the limit) and the target carries on; with the default limit
 * (the freeze's timeoutMs) it completes.
 */
import { describe, expect, it } from 'vitest';
import { freezeProcess, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, remoteMunmap, SYS_mmap } from '../../src/process/control/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';

killTargetsAfterAll();

/** mman-linux.h: populate (prefault) the page tables. */
const MAP_POPULATE = 0x08000;
const SIZE = 256 << 20;

describe('injected system call limit', () => {
  it('follows syscallTimeoutMs (default timeoutMs) for quick calls too', async () => {
    const t = await startTarget(await compile({ file: 'process-control/threads.c', flags: ['-O2', '-g'], name: 'threads-timeout' }), ['2']);
    const args = [0, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0];

    let f = freezeProcess(t.pid, { timeoutMs: 5000, syscallTimeoutMs: 1 });
    try {
      expect(() => f.injectSyscall(SYS_mmap, args)).toThrow(expect.objectContaining({ code: 'PROCESS_INJECTION_FAILED', message: expect.stringMatching(/did not return within 1 ms/) }));
    } finally {
      f.thaw();
    }
    t.child.stdin!.write('value\n');
    await t.waitFor('value 1');

    // Default: the freeze's timeoutMs, here 30 s: the same call completes.
    f = freezeProcess(t.pid, { timeoutMs: 30_000 });
    try {
      const addr = f.injectSyscall(SYS_mmap, args);
      expect(addr > 0n && addr < 1n << 47n).toBe(true);
      remoteMunmap(f, addr, SIZE);
    } finally {
      f.thaw();
    }
    t.child.stdin!.write('value\n');
    await t.waitFor(/value 1\n[\s\S]*value 1\n/);
    await t.kill();
  }, 120_000);
});
