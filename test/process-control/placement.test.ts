import { describe, expect, it } from 'vitest';
import { freeGaps, placementCandidates } from '../../src/process/control/index.js';
import { parseMaps } from '../../src/process/inspect/procfs.js';

const MAPS = parseMaps(
  [
    '555555554000-555555556000 r--p 00000000 fd:01 100 /usr/bin/prog',
    '555555556000-555555558000 r-xp 00002000 fd:01 100 /usr/bin/prog',
    '555555558000-55555555a000 rw-p 00004000 fd:01 100 /usr/bin/prog',
    '55555555a000-55555557b000 rw-p 00000000 00:00 0 [heap]',
    '7ffff7d80000-7ffff7da8000 r--p 00000000 fd:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6',
    '7ffff7da8000-7ffff7f3d000 r-xp 00028000 fd:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6',
    '7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0 [vdso]',
    '7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]',
  ].join('\n'),
);
const PAGE = 4096n;
const overlaps = (a: bigint, size: bigint) => MAPS.some((m) => m.start < a + size + PAGE && m.end + PAGE > a);

describe('near placement (pure)', () => {
  it('gaps never touch a mapping and stay below the user-space limit and off the stack guard gap', () => {
    const gaps = freeGaps(MAPS);
    for (const g of gaps) {
      expect(g.end).toBeGreaterThan(g.start);
      expect(g.end).toBeLessThanOrEqual(0x7fff_ffff_f000n);
      for (const m of MAPS) expect(m.start >= g.end + PAGE || m.end + PAGE <= g.start || m.path === '[vsyscall]').toBe(true);
    }
    const stack = MAPS.find((m) => m.path === '[stack]')!;
    expect(gaps.some((g) => g.end > stack.start - 256n * PAGE && g.start < stack.start)).toBe(false);
  });

  it('candidates lie inside [low, high), do not overlap, and the first is the closest to near', () => {
    const near = 0x555555556000n;
    const reach = 0x7fff_0000n;
    for (const size of [PAGE, 16n * PAGE, 1024n * PAGE]) {
      const c = placementCandidates(MAPS, near - reach, near + reach, size, near);
      expect(c.length).toBeGreaterThan(0);
      for (const a of c) {
        expect(a % PAGE).toBe(0n);
        expect(a).toBeGreaterThanOrEqual(near - reach);
        expect(a + size).toBeLessThanOrEqual(near + reach);
        expect(overlaps(a, size)).toBe(false);
      }
      const d = (a: bigint) => (a > near ? a + size - near : near - a);
      expect(c.map(d)).toEqual([...c.map(d)].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));
      // Closest: just below the program (one guard page); above: right after the heap.
      expect(c[0]).toBe(0x555555554000n - PAGE - size);
      expect(c).toContain(0x55555557b000n + PAGE);
    }
  });

  it('returns nothing when no gap fits', () => {
    const libc = MAPS.find((m) => m.path.endsWith('libc.so.6') && m.perms === 'r-xp')!;
    // Window entirely inside libc: no room.
    expect(placementCandidates(MAPS, libc.start, libc.end, PAGE, libc.start)).toEqual([]);
    // Bigger than any gap in a small window.
    expect(placementCandidates(MAPS, 0x555555554000n, 0x555555600000n, 1n << 30n, 0x555555554000n)).toEqual([]);
  });
});
