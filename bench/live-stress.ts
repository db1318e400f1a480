/**
 * Live-switch stress, long run (issue #10 "Measure"): the run of test/engine/live-stress.test.ts
 * (see bench/live-stress-run.ts and test/fixtures/engine/live-stress.c for the check) for 10,000
 * apply/remove cycles, without and with SIGUSR1 arriving at a high rate. Prints crashes, wrong
 * results, mixes (and those beyond the one-per-flip rule) and operations per second.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/live-stress.js [--cycles 10000] [--workers 8]
 *                                               [--freeze] [--alternate] [--minutes 30] [--json]
 * --freeze asks the engine for the freeze protocol; --alternate gives every other cycle's patch
 * another id, so that no apply revives the patch the last remove left retired (each is linked and
 * written afresh, the retired one reclaimed first); --minutes bounds each of the two runs.
 * Exit status 1 when anything was wrong.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { arg, repoRoot } from './common.js';
import { buildLiveStress, runLiveStress, type LiveStressResult } from './live-stress-run.js';

const cycles = Number(arg('--cycles', '10000'));
const workers = Number(arg('--workers', '8'));
const minutes = Number(arg('--minutes', '30'));
const freeze = process.argv.includes('--freeze');
const alternateIds = process.argv.includes('--alternate');
const json = process.argv.includes('--json');

function bad(r: LiveStressResult): boolean {
  const s = r.stats;
  return r.crashed !== null || s === null || s.wrong + s.sigwrong + s.unmatched > 0 || s.maxmixed > r.operations || r.cycles < cycles;
}

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-live-stress-'));
  try {
    const build = buildLiveStress(repoRoot(), dir);
    process.stderr.write(`patch of ${build.functions.join(', ')}; ${cycles} cycles, ${workers} workers${freeze ? ', --freeze' : ''}\n`);
    const runs: Array<{ signals: boolean; result: LiveStressResult }> = [];
    const errors: string[] = [];
    for (const signals of [false, true]) {
      const result = await runLiveStress(build, {
        workers, cycles, signals, freeze, alternateIds, deadline: Date.now() + minutes * 60_000,
        onProgress: (d) => { if (d % 1000 === 0) process.stderr.write(`  ${signals ? 'signals' : 'plain'}: ${d}/${cycles}\n`); },
      }).catch((e: unknown) => {
        // An operation the engine refused or failed (the target alive): report it, run the next case.
        errors.push(`${signals ? 'with signals' : 'plain'}: ${(e as Error).message}`);
        return undefined;
      });
      if (result) runs.push({ signals, result });
    }
    if (json) {
      process.stdout.write(`${JSON.stringify({ cycles, workers, freeze, runs: runs.map(({ signals, result: { output: _o, ...r } }) => ({ signals, ...r })), errors, loadavg: loadavg() }, null, 2)}\n`);
    } else {
      for (const { signals, result: r } of runs) {
        const s = r.stats;
        console.log(
          `${signals ? 'with SIGUSR1 storm' : 'plain'}: ${r.cycles}/${cycles} cycles in ${r.seconds.toFixed(1)} s (${(r.operations / r.seconds).toFixed(0)} ops/s), ` +
            `protocols ${JSON.stringify(r.protocols)}; crash ${r.crashed ?? 'none'}` +
            (s ? `; wrong ${s.wrong}, in handlers ${s.sigwrong}; mixed iterations ${s.mixed} (max ${s.maxmixed} per thread for ${r.operations} flips), beyond the rule ${s.unmatched}; ` +
              `calls ${3 * s.iterations}, handler runs ${s.sigcalls} of ${s.signals} signals sent` : ''),
        );
      }
      for (const e of errors) console.log(`error: ${e}`);
      console.log(`load average at the end: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    }
    return errors.length > 0 || runs.some((r) => bad(r.result)) ? 1 : 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => { process.exitCode = code; },
  (e: unknown) => {
    console.error(e instanceof Error ? e.stack ?? e.message : String(e));
    process.exitCode = 1;
  },
);
