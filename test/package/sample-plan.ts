/** A realistic patch plan for package tests (the builder is not needed to make packages). */
import { createHash } from 'node:crypto';
import type { PatchPlan } from '../../src/patch/plan.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Two functions (padded and plain entry), two data blobs, every relocation target kind. */
export function samplePlan(): PatchPlan {
  const bigBase = 0xffff_8000_0000_1000n; // > 2^53: must round-trip exactly
  return {
    target: { buildId: '3f1c0a9e5b7d22c4e8a1f0b6d93c7e5a1b2c3d4e', name: 'server', size: 123_456 },
    functions: [
      {
        name: 'parse_request',
        file: 'parser.c',
        vaddr: 0x401136n,
        size: 96,
        oldHash: sha('old parse_request'),
        entry: {
          kind: 'padded',
          siteVaddr: 0x401131n,
          switchVaddr: 0x401136n,
          expected: new Uint8Array([0x90, 0x90, 0x90, 0x90, 0x90, 0x66, 0x90]),
        },
        // push rbp; mov rbp,rsp; call rel32 0; lea rax,[rip+0]; pop rbp; ret
        code: new Uint8Array([0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x05, 0, 0, 0, 0, 0x5d, 0xc3]),
        align: 16,
        relocations: [
          { offset: 5, type: 'pc32', target: { kind: 'symbol', name: 'memcpy', version: 'GLIBC_2.14' }, addend: -4n },
          { offset: 12, type: 'pc32', target: { kind: 'local', part: 'data', index: 0, offset: 3 }, addend: -4n },
        ],
      },
      {
        name: 'helper',
        vaddr: bigBase,
        size: 32,
        oldHash: sha('old helper'),
        entry: { kind: 'plain', siteVaddr: bigBase + 4n, switchVaddr: bigBase + 4n, expected: new Uint8Array([0x55, 0x48, 0x89, 0xe5, 0x53]) },
        code: new Uint8Array([0xf3, 0x0f, 0x1e, 0xfa, 0xc3]),
        align: 1,
        relocations: [],
      },
    ],
    data: [
      { name: '.rodata.str1.1+0x40', bytes: new TextEncoder().encode('hello, fixed\n\0'), align: 1, relocations: [] },
      {
        name: 'jump table of parse_request',
        bytes: new Uint8Array(24),
        align: 8,
        relocations: [
          { offset: 0, type: 'abs64', target: { kind: 'local', part: 'function', index: 0, offset: 16 }, addend: 0n },
          { offset: 8, type: 'abs64', target: { kind: 'module', vaddr: 0xffff_ffff_ffff_fff0n }, addend: -(1n << 62n) },
          { offset: 16, type: 'abs32s', target: { kind: 'symbol', name: 'counter', file: 'stats.c' }, addend: 0x7fff_ffffn },
          { offset: 20, type: 'abs32', target: { kind: 'module', vaddr: 0x404040n }, addend: 0n },
        ],
      },
      { name: 'empty', bytes: new Uint8Array(0), align: 4096, relocations: [] },
    ],
  };
}

export { prng } from '../helpers/prng.js';
