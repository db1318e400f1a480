/**
 * Apply/remove benchmark (issue 3 §6–7): applies and removes a 1-function patch on targets with 1,
 * 8 and 64 threads, 200 times each, and prints the median and p99 of the pause (first interrupt →
 * last detach, as measured by the engine) and of the end-to-end time of each call.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/apply.js [--runs 200] [--threads 1,8,64] [--busy] [--json]
 *
 * Targets: median pause ≤ 1 ms at 8 threads and ≤ 5 ms at 64 threads (threads that sleep between
 * calls, like a server's workers; --busy makes every thread call the function in a tight loop).
 */
import { spawn } from 'node:child_process';
import { arg, benchTargetPlan, buildBenchTarget, percentile } from './common.js';
import { applyPatch, removePatch } from '../src/patch/index.js';
import type { PatchPlan } from '../src/patch/plan.js';



const runs = Number(arg('--runs', '200'));
const threadCounts = arg('--threads', '1,8,64').split(',').map(Number);
const busy = process.argv.includes('--busy');
const json = process.argv.includes('--json');


function stats(v: number[]): { median: number; p99: number } {
  const s = [...v].sort((a, b) => a - b);
  return { median: percentile(s, 50), p99: percentile(s, 99) };
}

const ms = (us: number): string => `${(us / 1000).toFixed(3)} ms`;

async function benchOne(exe: string, plan: PatchPlan, threads: number): Promise<Record<string, unknown>> {
  const child = spawn(exe, [String(threads), ...(busy ? ['busy'] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((res, rej) => {
      child.stdout!.once('data', () => res());
      child.once('exit', (c) => rej(new Error(`bench target exited (${c})`)));
    });
    const pid = child.pid!;
    // Warm-up: maps the arena and the record once (not part of the steady state measured).
    await applyPatch(pid, plan, { patchId: 'bench' });
    await removePatch(pid, 'bench');
    const applyPause: number[] = [];
    const removePause: number[] = [];
    const applyE2e: number[] = [];
    const removeE2e: number[] = [];
    const work: number[] = [];
    for (let i = 0; i < runs; i++) {
      const a = await applyPatch(pid, plan, { patchId: 'bench' });
      applyPause.push(a.pauseMicros);
      applyE2e.push(a.totalMicros);
      work.push(a.frozenWorkMicros);
      const r = await removePatch(pid, 'bench');
      removePause.push(r.pauseMicros);
      removeE2e.push(r.totalMicros);
    }
    return {
      threads,
      runs,
      apply: { pause: stats(applyPause), endToEnd: stats(applyE2e), engineWorkWhileFrozen: stats(work) },
      remove: { pause: stats(removePause), endToEnd: stats(removeE2e) },
    };
  } finally {
    child.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const exe = buildBenchTarget();
  const plan = benchTargetPlan(exe);
  const results: Array<Record<string, unknown>> = [];
  for (const n of threadCounts) {
    const r = await benchOne(exe, plan, n);
    results.push(r);
    if (!json) {
      type S = { median: number; p99: number };
      const a = r.apply as { pause: S; endToEnd: S; engineWorkWhileFrozen: S };
      const d = r.remove as { pause: S; endToEnd: S };
      process.stdout.write(
        `${String(n).padStart(3)} threads${busy ? ' (busy)' : ''}, ${runs} runs: ` +
          `apply pause median ${ms(a.pause.median)} p99 ${ms(a.pause.p99)} (check+write ${ms(a.engineWorkWhileFrozen.median)}), end-to-end median ${ms(a.endToEnd.median)} p99 ${ms(a.endToEnd.p99)}; ` +
          `remove pause median ${ms(d.pause.median)} p99 ${ms(d.pause.p99)}, end-to-end median ${ms(d.endToEnd.median)} p99 ${ms(d.endToEnd.p99)}\n`,
      );
    }
  }
  if (json) process.stdout.write(`${JSON.stringify({ busy, results }, null, 2)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
