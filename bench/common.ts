/** Small helpers shared by the benchmarks: command-line options, the repository root, percentiles, the bench target. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseElf } from '../src/elf/index.js';
import type { PatchPlan } from '../src/patch/plan.js';

/** The repository root (the benchmarks run from bench/ or dist/bench/). */
export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) {
    if (dirname(d) === d) throw new Error('cannot find the repository root (package.json)');
    d = dirname(d);
  }
  return d;
}

/** The value after `name` on the command line (e.g. `--runs 200`), else `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** The p-th percentile (nearest rank) of ascending `sorted`; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Compiles test/fixtures/engine/bench-target.c (threads calling the hotpatch-ready `bench_value`). */
export function buildBenchTarget(): string {
  const out = join(tmpdir(), 'hotpatch-bench', 'bench-target');
  mkdirSync(dirname(out), { recursive: true });
  execFileSync('gcc', ['-O2', '-o', out, join(repoRoot(), 'test/fixtures/engine/bench-target.c'), '-lpthread']);
  return out;
}

/** A one-function plan replacing `bench_value` of the bench target by `lea eax, [rdi+2]; ret`. */
export function benchTargetPlan(exe: string): PatchPlan {
  const bytes = new Uint8Array(readFileSync(exe));
  const elf = parseElf(bytes);
  const sym = elf.getSymbol('bench_value');
  return {
    target: { buildId: elf.buildId!, name: 'bench-target', size: bytes.length },
    functions: [{
      name: 'bench_value', vaddr: sym.value, size: Number(sym.size),
      oldHash: createHash('sha256').update(elf.readVaddr(sym.value, Number(sym.size))).digest('hex'),
      entry: { kind: 'padded', siteVaddr: sym.value - 5n, switchVaddr: sym.value, expected: elf.readVaddr(sym.value - 5n, 7).slice() },
      code: Uint8Array.of(0x8d, 0x47, 0x02, 0xc3),
      align: 16,
      relocations: [],
    }],
    data: [],
  };
}
