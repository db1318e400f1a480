/**
 * CLI start-up cost (issue #13.6): wall and CPU time of short commands, interleaved round by round
 * with bare `node -e 0` so that a noisy machine affects every variant alike. Goal: `--help`,
 * `inspect` and `list` under 150 ms wall on an idle machine.
 *
 *   node dist/bench/cli-startup.js [--runs 20]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPackage, encodePackage } from '../src/patch/package/index.js';
import { arg, percentile, repoRoot } from './common.js';

const cli = join(repoRoot(), 'dist/src/cli/main.js');
const runs = Number(arg('--runs', '20'));

// A tiny package for `inspect` (content does not matter for start-up).
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-bench-startup-'));
const pkgPath = join(dir, 'p.hpk');
writeFileSync(pkgPath, encodePackage(createPackage({
  target: { buildId: '00'.repeat(20), name: 'x', size: 1 },
  functions: [{ name: 'f', vaddr: 0x1000n, size: 5, oldHash: '00'.repeat(32), entry: { kind: 'plain', siteVaddr: 0x1000n, switchVaddr: 0x1000n, expected: new Uint8Array(5) }, code: Uint8Array.of(0xc3), align: 16, relocations: [] }],
  data: [],
})));

const variants: Array<[string, string[]]> = [
  ['node -e 0 (baseline)', ['-e', '0']],
  ['hotpatch --version', [cli, '--version']],
  ['hotpatch --help', [cli, '--help']],
  ['hotpatch inspect PKG', [cli, 'inspect', pkgPath]],
  ['hotpatch list', [cli, 'list']],
  ['hotpatch verify --help', [cli, 'verify', '--help']],
];

const wall = new Map<string, number[]>(variants.map(([n]) => [n, []]));
const cpu = new Map<string, number[]>(variants.map(([n]) => [n, []]));
for (let r = 0; r < runs; r++) {
  for (const [name, args] of variants) {
    // `time` via /proc is not available for a child; use the rusage the shell reports.
    const t0 = process.hrtime.bigint();
    const res = spawnSync('bash', ['-c', 'TIMEFORMAT=%U+%S; time node "$@" >/dev/null 2>&1', 'bash', ...args], { encoding: 'utf8' });
    wall.get(name)!.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const m = /([\d.]+)\+([\d.]+)\s*$/.exec(res.stderr);
    if (m) cpu.get(name)!.push((Number(m[1]) + Number(m[2])) * 1000);
  }
}
console.log(`CLI start-up, ${runs} interleaved rounds (ms; median / p90)`);
for (const [name] of variants) {
  const w = [...wall.get(name)!].sort((a, b) => a - b);
  const c = [...cpu.get(name)!].sort((a, b) => a - b);
  console.log(`  ${name.padEnd(26)} wall ${percentile(w, 50).toFixed(0).padStart(5)} / ${percentile(w, 90).toFixed(0).padStart(5)}   cpu ${percentile(c, 50).toFixed(0).padStart(5)} / ${percentile(c, 90).toFixed(0).padStart(5)}`);
}
