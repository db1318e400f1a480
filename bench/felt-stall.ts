/**
 * Felt stall (issue #10 "Measure"): how long the threads of a running program feel an apply or a
 * remove, measured from inside it. The probe (bench/felt-stall-probe.c, gcc -O2
 * -fpatchable-function-entry=7,5) has N threads calling probe_value() in a tight loop, each
 * recording its longest gap between two iterations; after every CLI run this process asks it for
 * the longest gap of the window that run fell in.
 *
 * Variants, interleaved round by round in one run (the order rotates each round):
 *   baseline  `hotpatch list --pid P`: the same Node start, does not touch the target
 *   dry-run   `hotpatch apply PKG --pid P --dry-run`: the same CPU work as an apply (ELF parsing,
 *             reading the target's memory, linking) without stopping or changing anything — on a
 *             machine with few cores the CLI's own CPU use competes with the probe's threads, so
 *             live is also compared with this (column "vs dry-run")
 *   live      `hotpatch apply PKG --pid P` / `hotpatch remove ID --pid P` (the default protocol)
 *   freeze    the same with `--freeze` (all threads frozen), when the CLI has that option
 * For each thread count: `--rounds` apply+remove per variant on one process (after one warm-up
 * cycle that maps the arena and the record), then `--first` samples of the FIRST apply of a fresh
 * process per variant. Reported: the raw felt gap, and median / p90 of the excess over the
 * baseline's median gap at the same thread count (first applies against fresh-process baselines);
 * the goal for live is a median excess <= 50 µs. Also the CLI's wall time per apply.
 *
 * Pacing (`--pace auto`, the default): with fewer threads than cores every thread runs one tight
 * loop; with more, tight loops would measure the scheduler (a thread waits for its turn for tens
 * of ms whatever the CLI does) and starve the CLI, so each thread loops in 50 µs bursts and
 * sleeps between them, the probe using about half the cores in all; across a sleep the probe
 * counts only the oversleep. `--pace tight` forces tight loops everywhere. `--budget SECONDS`
 * (default 480) cuts the rounds of the later thread counts (at least 3) so a loaded machine
 * still finishes in time; the table gives each n.
 *
 * The package is made by the builder from the probe built without and with -DPROBE_NEW (unsigned,
 * applied with --allow-unsigned, as bench/under-load.ts does).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/felt-stall.js [--rounds 20] [--first 3]
 *                                              [--threads 1,8,64,256] [--pace auto|tight]
 *                                              [--budget 480] [--json]
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildPatch } from '../src/patch/builder/index.js';
import { createPackage, encodePackage } from '../src/patch/package/index.js';
import { arg, percentile, repoRoot } from './common.js';

const rounds = Number(arg('--rounds', '20'));
const firstSamples = Number(arg('--first', '3'));
const threadCounts = arg('--threads', '1,8,64,256').split(',').map(Number);
const json = process.argv.includes('--json');
const pace = arg('--pace', 'auto');
const budgetMs = Number(arg('--budget', '480')) * 1000;
/** Burst length of a paced probe thread (µs). */
const BURST_MICROS = 50;
const BUILD_FLAGS = ['-O2', '-pthread', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];
/** A CLI run or a probe answer taking longer than this is a hang, not a measurement. */
const HANG_MS = 120_000;

type Variant = 'baseline' | 'dry-run' | 'live' | 'freeze';
type Op = 'apply' | 'remove';

interface Sample {
  threads: number;
  variant: Variant;
  op: Op;
  first: boolean;
  /** Longest gap any probe thread felt in the window of this CLI run (µs). */
  gapMicros: number;
  /** Wall time of the CLI process, spawn to exit (ms). */
  cliMillis: number;
  /** Probe threads whose last call returned the new version, after the run. */
  newThreads: number;
}

function log(s: string): void {
  process.stderr.write(`${s}\n`);
}

/** The probe: one line out per "m" in. */
class Probe {
  readonly pid: number;
  readonly #child: ChildProcess;
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;
  #exited = false;

  private constructor(child: ChildProcess) {
    this.#child = child;
    this.pid = child.pid!;
    createInterface({ input: child.stdout! }).on('line', (l) => {
      this.#lines.push(l);
      this.#wake?.();
    });
    child.once('exit', () => {
      this.#exited = true;
      this.#wake?.();
    });
  }

  static async start(exe: string, threads: number): Promise<Probe> {
    const p = new Probe(spawn(exe, [String(threads), ...pacing(threads).map(String)], { stdio: ['pipe', 'pipe', 'inherit'] }));
    const ready = await p.#next();
    if (!ready.startsWith('ready')) throw new Error(`probe said ${ready}`);
    return p;
  }

  async #next(): Promise<string> {
    const deadline = Date.now() + HANG_MS;
    while (this.#lines.length === 0) {
      if (this.#exited) throw new Error(`probe ${this.pid} exited`);
      if (Date.now() > deadline) throw new Error(`probe ${this.pid} did not answer`);
      await new Promise<void>((res) => {
        this.#wake = res;
        setTimeout(res, 1000);
      });
    }
    return this.#lines.shift()!;
  }

  /** Closes the current window: its longest gap (µs), threads on the new version, wrong calls so far. */
  async window(): Promise<{ gapMicros: number; newThreads: number; wrong: number }> {
    this.#child.stdin!.write('m\n');
    const line = await this.#next();
    const m = /^max (\d+) new (\d+) wrong (\d+)$/.exec(line);
    if (!m) throw new Error(`probe said ${line}`);
    return { gapMicros: Number(m[1]) / 1000, newThreads: Number(m[2]), wrong: Number(m[3]) };
  }

  kill(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }
}

/** [busy µs, sleep µs] per probe thread; sleep 0 = tight loop (see the header). */
function pacing(threads: number): [number, number] {
  const cores = availableParallelism();
  if (pace === 'tight' || threads < cores) return [0, 0];
  // Busy fraction per thread = burst / (burst + sleep); all threads together use half the cores.
  return [BURST_MICROS, Math.round(BURST_MICROS * ((2 * threads) / cores - 1))];
}

/** Runs the CLI; resolves to its wall time (ms); rejects on a non-zero exit. */
function runCli(cli: string, args: string[]): Promise<number> {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k === 'HOTPATCH_TRUSTED_KEYS' || k.startsWith('HOTPATCH_FAULT')) delete env[k];
  const t0 = process.hrtime.bigint();
  return new Promise((res, rej) => {
    execFile('node', [cli, ...args], { env, timeout: HANG_MS }, (err, _stdout, stderr) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (err) rej(new Error(`hotpatch ${args.join(' ')}: ${err.message} ${stderr}`));
      else res(ms);
    });
  });
}

interface Setup {
  cli: string;
  exe: string;
  pkgPath: string;
  patchId: string;
  /** The CLI accepts `--freeze` (apply and remove). */
  hasFreeze: boolean;
}

function cliArgs(s: Setup, variant: Variant, op: Op, pid: number): string[] {
  if (variant === 'baseline') return ['list', '--pid', String(pid)];
  if (variant === 'dry-run') return ['apply', s.pkgPath, '--pid', String(pid), '--allow-unsigned', '--dry-run'];
  const freeze = variant === 'freeze' ? ['--freeze'] : [];
  return op === 'apply'
    ? ['apply', s.pkgPath, '--pid', String(pid), '--allow-unsigned', ...freeze]
    : ['remove', s.patchId, '--pid', String(pid), ...freeze];
}

/** One CLI run inside one probe window; checks the probe then runs the version the op implies. */
async function measure(s: Setup, probe: Probe, threads: number, variant: Variant, op: Op, first: boolean): Promise<Sample> {
  const cliMillis = await runCli(s.cli, cliArgs(s, variant, op, probe.pid));
  const w = await probe.window();
  if (w.wrong !== 0) throw new Error(`probe ${probe.pid} saw ${w.wrong} wrong results`);
  if (variant !== 'baseline') {
    const want = op === 'apply' && variant !== 'dry-run' ? threads : 0;
    if (w.newThreads !== want) throw new Error(`after ${variant} ${op}: ${w.newThreads}/${threads} probe threads on the new version`);
  }
  return { threads, variant, op, first, gapMicros: w.gapMicros, cliMillis, newThreads: w.newThreads };
}

function rotate<T>(xs: readonly T[], by: number): T[] {
  return xs.map((_, i) => xs[(i + by) % xs.length]!);
}

async function steadyState(s: Setup, variants: Variant[], threads: number, deadline: number): Promise<Sample[]> {
  const probe = await Probe.start(s.exe, threads);
  const out: Sample[] = [];
  try {
    // Warm-up: the first apply maps the arena and the record (measured separately below).
    await runCli(s.cli, cliArgs(s, 'live', 'apply', probe.pid));
    await runCli(s.cli, cliArgs(s, 'live', 'remove', probe.pid));
    await probe.window(); // opens the first measured window
    for (let r = 0; r < rounds && (r < 3 || Date.now() < deadline); r++) {
      for (const v of rotate(variants, r)) {
        out.push(await measure(s, probe, threads, v, 'apply', false));
        out.push(await measure(s, probe, threads, v, 'remove', false));
      }
    }
  } finally {
    probe.kill();
  }
  return out;
}

async function firstApplies(s: Setup, variants: Variant[], threads: number, deadline: number): Promise<Sample[]> {
  const out: Sample[] = [];
  for (let r = 0; r < firstSamples && (r < 1 || Date.now() < deadline); r++) {
    for (const v of rotate(variants, r)) {
      const probe = await Probe.start(s.exe, threads);
      try {
        await probe.window();
        out.push(await measure(s, probe, threads, v, 'apply', true));
      } finally {
        probe.kill();
      }
    }
  }
  return out;
}

interface Stats {
  n: number;
  rawMedianMicros: number;
  /** Over the `list` baseline's median. */
  excessMedianMicros: number;
  excessP90Micros: number;
  /** Median excess over the dry-run's median (NaN when not measured). */
  overDryRunMedianMicros: number;
}

function stats(samples: Sample[], baselineMedian: number, dryRunMedian: number): Stats {
  const raw = samples.map((x) => x.gapMicros).sort((a, b) => a - b);
  const ex = raw.map((g) => g - baselineMedian);
  return {
    n: raw.length, rawMedianMicros: percentile(raw, 50), excessMedianMicros: percentile(ex, 50), excessP90Micros: percentile(ex, 90),
    overDryRunMedianMicros: percentile(raw, 50) - dryRunMedian,
  };
}

interface Row {
  threads: number;
  variant: Variant;
  steady: Stats;
  first: Stats;
  /** CLI wall time of the steady-state applies (for baseline: of `list`). */
  cliApplyMedianMillis: number;
  cliApplyP90Millis: number;
  cliFirstApplyMedianMillis: number;
}

function summarize(all: Sample[], variants: Variant[]): Row[] {
  const rows: Row[] = [];
  for (const t of threadCounts) {
    const pick = (v: Variant, first: boolean): Sample[] => all.filter((x) => x.threads === t && x.variant === v && x.first === first);
    const med = (xs: Sample[]): number => percentile(xs.map((x) => x.gapMicros).sort((a, b) => a - b), 50);
    const base = med(pick('baseline', false));
    const baseFirst = med(pick('baseline', true));
    const dry = med(pick('dry-run', false));
    const dryFirst = med(pick('dry-run', true));
    for (const v of variants) {
      const steady = pick(v, false);
      const applies = steady.filter((x) => x.op === 'apply').map((x) => x.cliMillis).sort((a, b) => a - b);
      const firstCli = pick(v, true).map((x) => x.cliMillis).sort((a, b) => a - b);
      rows.push({
        threads: t,
        variant: v,
        steady: stats(steady, base, dry),
        first: stats(pick(v, true), baseFirst, dryFirst),
        cliApplyMedianMillis: percentile(applies, 50),
        cliApplyP90Millis: percentile(applies, 90),
        cliFirstApplyMedianMillis: percentile(firstCli, 50),
      });
    }
  }
  return rows;
}

function printTable(rows: Row[], notes: string[]): void {
  const f = (v: number, d = 0): string => (Number.isFinite(v) ? v.toFixed(d) : '-');
  const head = ['threads', 'variant', 'n', 'raw med µs', 'excess med µs', 'excess p90 µs', 'vs dry-run µs', 'first n', 'first raw µs', 'first exc med µs', 'first exc p90 µs', 'first vs dry-run µs', 'cli apply ms', 'cli p90 ms', 'cli first ms'];
  const lines = rows.map((r) => [
    String(r.threads), r.variant, String(r.steady.n), f(r.steady.rawMedianMicros), f(r.steady.excessMedianMicros), f(r.steady.excessP90Micros), f(r.steady.overDryRunMedianMicros),
    String(r.first.n), f(r.first.rawMedianMicros), f(r.first.excessMedianMicros), f(r.first.excessP90Micros), f(r.first.overDryRunMedianMicros),
    f(r.cliApplyMedianMillis), f(r.cliApplyP90Millis), f(r.cliFirstApplyMedianMillis),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(`felt stall: longest gap a probe thread felt per CLI run; excess = gap - baseline median (same thread count; first applies vs fresh-process baseline)`);
  console.log(fmt(head));
  for (const l of lines) console.log(fmt(l));
  console.log('goal (issue #10): live excess median <= 50 µs at every thread count, first apply included');
  for (const n of notes) console.log(`note: ${n}`);
}

async function main(): Promise<void> {
  const root = repoRoot();
  const cli = join(root, 'dist/src/cli/main.js');
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-felt-stall-'));
  const started = Date.now();
  try {
    const src = join(root, 'bench/felt-stall-probe.c');
    const exe = join(dir, 'probe');
    const fixed = join(dir, 'probe.new');
    execFileSync('gcc', [...BUILD_FLAGS, '-o', exe, src]);
    execFileSync('gcc', [...BUILD_FLAGS, '-DPROBE_NEW', '-o', fixed, src]);
    const { plan, report } = buildPatch(new Uint8Array(readFileSync(exe)), new Uint8Array(readFileSync(fixed)), { oldName: 'probe', newName: 'probe.new' });
    const pkg = createPackage(plan, { description: 'probe_value: x + 2' });
    const pkgPath = join(dir, 'probe.hpk');
    writeFileSync(pkgPath, encodePackage(pkg));
    log(`package ${pkg.id}: ${report.changed.map((c) => `${c.name} (${c.entry})`).join(', ')}`);

    const help = (cmd: string): string => execFileSync('node', [cli, cmd, '--help'], { encoding: 'utf8' });
    const hasFreeze = /--freeze\b/.test(help('apply')) && /--freeze\b/.test(help('remove'));
    const notes: string[] = [];
    const variants: Variant[] = hasFreeze ? ['baseline', 'dry-run', 'live', 'freeze'] : ['baseline', 'dry-run', 'live'];
    if (!hasFreeze) notes.push('this CLI has no --freeze: "live" is the default CLI (which may itself freeze), no freeze variant');
    const s: Setup = { cli, exe, pkgPath, patchId: pkg.id, hasFreeze };

    const samples: Sample[] = [];
    for (const [i, t] of threadCounts.entries()) {
      const t0 = Date.now();
      // This thread count's share of what is left of the budget: 80% steady state, 20% first applies.
      const share = (started + budgetMs - t0) / (threadCounts.length - i);
      samples.push(...(await steadyState(s, variants, t, t0 + 0.8 * share)));
      samples.push(...(await firstApplies(s, variants, t, t0 + share)));
      const [busy, sleep] = pacing(t);
      log(`  ${t} threads (${sleep === 0 ? 'tight loops' : `${busy} µs bursts, ${sleep} µs sleeps`}): ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    const rows = summarize(samples, variants);
    const load = loadavg().map((x) => Number(x.toFixed(2)));
    notes.push(`load average at the end: ${load.join(' ')}; ${((Date.now() - started) / 1000).toFixed(0)} s`);
    notes.push(`pacing: ${threadCounts.map((t) => `${t}: ${pacing(t)[1] === 0 ? 'tight' : `${pacing(t).join('/')} µs busy/sleep`}`).join(', ')}`);
    const pacings = Object.fromEntries(threadCounts.map((t) => [t, pacing(t)]));
    if (json) process.stdout.write(`${JSON.stringify({ rounds, firstSamples, hasFreeze, pacing: pacings, rows, samples, loadavg: load, notes }, null, 2)}\n`);
    else printTable(rows, notes);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack ?? e.message : String(e));
  process.exitCode = 1;
});
