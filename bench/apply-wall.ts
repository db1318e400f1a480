/**
 * Where the wall time of a one-function `hotpatch apply` goes (issue #10 "Measure"): process start
 * to exit of the CLI, split by running ever larger parts of the same work, interleaved round by
 * round so that a noisy machine affects every variant alike:
 *
 *   node -e 0                        Node start
 *   hotpatch --version               + loading the CLI's entry modules
 *   hotpatch inspect PKG --trust K   + reading the package, decoding it, checking its signature
 *   hotpatch apply --dry-run         + the updater and engine modules, /proc, ELF parsing, linking
 *   hotpatch apply                   + arena setup (first apply only), writes and record (live switch)
 *   hotpatch remove                  the way back (live switch, reclaim)
 *
 *   npx tsc -p tsconfig.json && node dist/bench/apply-wall.js [--runs 15]
 *
 * Goal (#10): a one-function apply under 200 ms on an idle machine.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPackage, encodePackage } from '../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../src/patch/trust/index.js';
import { arg, benchTargetPlan, buildBenchTarget, percentile, repoRoot } from './common.js';

const runs = Number(arg('--runs', '15'));
const cli = join(repoRoot(), 'dist/src/cli/main.js');


function timed(args: string[]): { ms: number; out: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('node', args, { encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return { ms, out: r.stdout };
}

async function main(): Promise<void> {
  const exe = buildBenchTarget();
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-bench-wall-'));
  const key = writeKeyFiles(join(dir, 'k.key'), { comment: 'bench' });
  const pkg = join(dir, 'p.hpk');
  const signed = signPackage(createPackage(benchTargetPlan(exe)), readFileSync(join(dir, 'k.key'), 'utf8'));
  writeFileSync(pkg, encodePackage(signed));
  const child = spawn(exe, ['8'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((res, rej) => {
      child.stdout!.once('data', () => res());
      child.once('exit', (c) => rej(new Error(`bench target exited (${c})`)));
    });
    const pid = String(child.pid!);
    const trust = ['--trust', key.publicKeyFile];
    const variants: Array<[string, () => string[]]> = [
      ['node -e 0', () => ['-e', '0']],
      ['hotpatch --version', () => [cli, '--version']],
      ['hotpatch inspect PKG', () => [cli, 'inspect', pkg, ...trust]],
      ['apply --dry-run', () => [cli, 'apply', pkg, '--pid', pid, ...trust, '--dry-run']],
      ['apply (live)', () => [cli, 'apply', pkg, '--pid', pid, ...trust, '--json']],
      ['remove (live)', () => [cli, 'remove', signed.id, '--pid', pid, '--json']],
    ];
    const wall = new Map<string, number[]>(variants.map(([n]) => [n, []]));
    const engine = { apply: [] as number[], remove: [] as number[] };
    for (let r = 0; r < runs; r++) {
      for (const [name, args] of variants) {
        const { ms, out } = timed(args());
        wall.get(name)!.push(ms);
        if (name.startsWith('apply (') || name.startsWith('remove (')) {
          const doc = JSON.parse(out) as { results: Array<{ totalMicros?: number; protocol?: string }> };
          (name.startsWith('apply') ? engine.apply : engine.remove).push((doc.results[0]?.totalMicros ?? 0) / 1000);
        }
      }
    }
    const med = (v: number[]): number => percentile([...v].sort((a, b) => a - b), 50);
    console.log(`CLI wall time of a one-function apply, ${runs} interleaved rounds (ms, median / p90; + = over the row above)`);
    let prev = 0;
    for (const [name] of variants) {
      const v = [...wall.get(name)!].sort((a, b) => a - b);
      const m = percentile(v, 50);
      const delta = name.startsWith('remove') ? '' : `  +${(m - prev).toFixed(0)}`;
      console.log(`  ${name.padEnd(22)} ${m.toFixed(0).padStart(5)} / ${percentile(v, 90).toFixed(0).padStart(5)}${delta}`);
      if (!name.startsWith('remove')) prev = m;
    }
    console.log(`  engine time inside the CLI (totalMicros): apply ${med(engine.apply).toFixed(1)} ms, remove ${med(engine.remove).toFixed(1)} ms`);
  } finally {
    child.kill('SIGKILL');
  }
}

await main();
