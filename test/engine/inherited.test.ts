/** The child's view of an inherited record (src/patch/engine/inherited.ts): the code is the truth. */
import { describe, expect, it } from 'vitest';
import { inheritedView, isInherited } from '../../src/patch/engine/inherited.js';
import { emptyRecord, type PatchRecord, type RecordPatch, type SiteState } from '../../src/patch/engine/record.js';
import type { Mapping } from '../../src/process/index.js';

const SITE = 0x401000n;
const O = Uint8Array.of(1, 1, 1, 1, 1, 1, 1);
const W1 = Uint8Array.of(2, 2, 2, 2, 2, 2, 2);
const W2 = Uint8Array.of(3, 3, 3, 3, 3, 3, 3);
const ARENA = { start: 0x7f0000000000n, end: 0x7f0000010000n, kind: 'code' as const, prot: 'r-x' as const, near: '/bin/x' };
const LATE_ARENA = { ...ARENA, start: 0x7f0000100000n, end: 0x7f0000110000n };

function patch(id: string, original: Uint8Array, written: Uint8Array, state: SiteState, codeStart = ARENA.start): RecordPatch {
  return {
    id, packageHash: '', signer: null, module: { path: '/bin/x', name: 'x', buildId: 'ab', loadBias: 0n }, state, appliedAt: 0,
    code: { start: codeStart, end: codeStart + 16n }, data: null, relocations: [],
    sites: [{ function: 'f', kind: 'padded', address: SITE, switchAddress: SITE + 5n, original, written, newCode: { start: codeStart, end: codeStart + 16n }, codeSha256: '', state }],
  };
}

function mapping(start: bigint, end: bigint, perms = 'r-xp'): Mapping {
  return { start, end, perms, protection: { read: true, write: false, execute: perms[2] === 'x', shared: perms[3] === 's' }, fileOffset: 0n, dev: '00:00', inode: 0, path: '', deleted: false, isFile: false };
}

function shared(patches: RecordPatch[], arenas = [ARENA]): PatchRecord {
  return { ...emptyRecord(100), generation: 7n, arenas, patches };
}

const childMaps = [mapping(ARENA.start, ARENA.start + 0x8000n), mapping(ARENA.start + 0x8000n, ARENA.end)]; // split VMAs
const memory = (site: Uint8Array | undefined) => (a: bigint, n: number) => (a === SITE ? site?.slice(0, n) : undefined);
const states = (r: PatchRecord) => r.patches.map((p) => [p.id, p.state]);

describe('inheritedView', () => {
  it('peels stacked patches by the bytes in the child: both, the lower only, or none', () => {
    const rec = shared([patch('low', O, W1, 'applied'), patch('top', W1, W2, 'applied')]);
    expect(states(inheritedView(rec, 200, childMaps, memory(W2)))).toEqual([['low', 'applied'], ['top', 'applied']]);
    expect(states(inheritedView(rec, 200, childMaps, memory(W1)))).toEqual([['low', 'applied']]);
    expect(states(inheritedView(rec, 200, childMaps, memory(O)))).toEqual([]);
  });

  it('keeps a patch the parent removed after the fork as applied, one removed before as retired, drops one it is still applying', () => {
    expect(states(inheritedView(shared([patch('p', O, W1, 'removed')]), 200, childMaps, memory(W1)))).toEqual([['p', 'applied']]);
    const before = inheritedView(shared([patch('p', O, W1, 'removed')]), 200, childMaps, memory(O));
    expect(states(before)).toEqual([['p', 'removed']]);
    expect(before.patches[0]!.retired).toBe(true);
    expect(states(inheritedView(shared([patch('p', O, W1, 'removing')]), 200, childMaps, memory(O)))).toEqual([['p', 'removed']]);
    expect(states(inheritedView(shared([patch('p', O, W1, 'pending')]), 200, childMaps, memory(O)))).toEqual([]);
    expect(states(inheritedView(shared([patch('p', O, W1, 'pending')]), 200, childMaps, memory(W1)))).toEqual([['p', 'applied']]);
  });

  it('drops arenas the child does not map as made (later mappings, other protection, shared or file) and the patches in them', () => {
    const rec = shared([patch('early', O, W1, 'applied'), patch('late', W1, W2, 'applied', LATE_ARENA.start)], [ARENA, LATE_ARENA]);
    const v = inheritedView(rec, 200, childMaps, memory(W1)); // forked before "late"
    expect(v.arenas).toEqual([ARENA]);
    expect(states(v)).toEqual([['early', 'applied']]);
    for (const bad of [[mapping(ARENA.start, ARENA.end, 'rw-p')], [mapping(ARENA.start, ARENA.end, 'r-xs')], [mapping(ARENA.start, ARENA.end - 0x1000n)], []]) {
      expect(inheritedView(rec, 200, bad, memory(W1)).arenas).toEqual([]);
    }
  });

  it('treats unreadable site bytes as not patched, names the child and clears the parent transaction', () => {
    const rec = { ...shared([patch('p', O, W1, 'pending')]), transaction: { op: 'apply' as const, patchId: 'p', ownerPid: 9, startedAt: 0 } };
    const v = inheritedView(rec, 200, childMaps, memory(undefined));
    expect(v).toMatchObject({ pid: 200, transaction: null, patches: [] });
  });

  it('a record is inherited when written for another pid, never when empty', () => {
    expect(isInherited(shared([]), 200)).toBe(true);
    expect(isInherited(shared([]), 100)).toBe(false);
    expect(isInherited(emptyRecord(100), 200)).toBe(false);
  });
});
