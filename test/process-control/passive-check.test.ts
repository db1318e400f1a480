/** The parsers of passive-check.ts, on real /proc text shapes and on corrupted or truncated input. */
import { describe, expect, it } from 'vitest';
import { parseSchedstat, parseSyscallFile } from '../../src/process/control/passive-check.js';

describe('parseSyscallFile', () => {
  it('a thread in a system call: number, six arguments, sp, pc', () => {
    const p = parseSyscallFile('270 0xfb 0x7fffbdd032c0 0x0 0x0 0x7fffbdd031d0 0x7fffbdd031e0 0x7fffbdd031a0 0x7f3a1ef01aec\n');
    expect(p).toEqual({ text: '270 0xfb 0x7fffbdd032c0 0x0 0x0 0x7fffbdd031d0 0x7fffbdd031e0 0x7fffbdd031a0 0x7f3a1ef01aec', inSyscall: true, sp: 0x7fffbdd031a0n, pc: 0x7f3a1ef01aecn });
  });

  it('a thread blocked outside a system call (stopped): -1, sp, pc; no restart', () => {
    expect(parseSyscallFile('-1 0x7ffc10 0x401136')).toMatchObject({ inSyscall: false, sp: 0x7ffc10n, pc: 0x401136n });
  });

  it('running, empty, truncated or corrupted: undefined (the thread is then stopped to be checked)', () => {
    for (const bad of [
      'running',
      '',
      '270 0xfb 0x7fffbdd032c0',
      '270 0xfb 0x0 0x0 0x0 0x0 0x0 0x7fffbdd031a0',
      '-1 0x7ffc10',
      '-1 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8',
      '5 0x7ffc10 0x401136',
      'x 0x0 0x0 0x0 0x0 0x0 0x0 0x1 0x2',
      '0 0x0 0x0 0x0 0x0 0x0 0x0 sp 0x2',
      '0 0x0 0x0 0x0 0x0 0x0 0x0 0x1 -0x2',
    ]) expect(parseSyscallFile(bad), bad).toBeUndefined();
  });
});

describe('parseSchedstat', () => {
  it('three counters, or undefined for anything else', () => {
    expect(parseSchedstat('360507790 20514393942 6369\n')).toBe('360507790 20514393942 6369');
    for (const bad of ['', '1 2', '1 2 3 4', 'a b c', '1 -2 3']) expect(parseSchedstat(bad), bad).toBeUndefined();
  });
});
