/**
 * The live-switch stress run shared by test/engine/live-stress.test.ts and bench/live-stress.ts:
 * build test/fixtures/engine/live-stress.c and its fix (-DLIVE_NEW), make the patch of f1, f2, f3
 * with the builder, start the target, and apply/remove it in this process (engine library API)
 * while bracketing every operation in the target's epoch (see the C file for the check).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildPatch } from '../src/patch/builder/index.js';
import { applyPatch, removePatch } from '../src/patch/engine/index.js';
import type { PatchPlan } from '../src/patch/plan.js';

const BUILD_FLAGS = ['-O2', '-pthread', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];
/** An answer of the target taking longer than this is a hang. */
const ANSWER_MS = 60_000;

export interface LiveStressBuild {
  exe: string;
  plan: PatchPlan;
  /** The functions the builder put in the patch (f1, f2, f3). */
  functions: string[];
}

/** Compiles the target and its fix into `dir` and builds the patch. */
export function buildLiveStress(root: string, dir: string): LiveStressBuild {
  const src = join(root, 'test/fixtures/engine/live-stress.c');
  const exe = join(dir, 'live-stress');
  const fixed = join(dir, 'live-stress.new');
  execFileSync('gcc', [...BUILD_FLAGS, '-o', exe, src]);
  execFileSync('gcc', [...BUILD_FLAGS, '-DLIVE_NEW', '-o', fixed, src]);
  const { plan, report } = buildPatch(new Uint8Array(readFileSync(exe)), new Uint8Array(readFileSync(fixed)), { oldName: 'live-stress', newName: 'live-stress.new' });
  return { exe, plan, functions: report.changed.map((c) => c.name).sort() };
}

/** The target's counters (see main() of the C file). */
export interface LiveStressStats {
  iterations: number;
  miniterations: number;
  mixed: number;
  maxmixed: number;
  transitions: number;
  maxtransitions: number;
  unmatched: number;
  wrong: number;
  sigcalls: number;
  sigwrong: number;
  signals: number;
  epoch: number;
}

export interface LiveStressOptions {
  workers?: number;
  signals?: boolean;
  cycles: number;
  /** Stop early (after a whole cycle) at this time (Date.now()), if given. */
  deadline?: number;
  /** Pass `freeze: true` to the engine (an option of the zero-stall engine; ignored before it). */
  freeze?: boolean;
  timeoutMs?: number;
  /**
   * Negative control: one patch per function, applied f1, f2, f3 in turn within one operation
   * (removed in reverse), so the functions do NOT switch together; the check must catch it.
   */
  splitPerFunction?: boolean;
  /**
   * Give every other cycle's patch another id (same plan), so that no apply can revive the patch
   * the previous remove left retired: each one is linked and written afresh.
   */
  alternateIds?: boolean;
  onProgress?: (done: number) => void;
}

export interface LiveStressResult {
  cycles: number;
  operations: number;
  seconds: number;
  /** The target died (signal or exit) during the run. */
  crashed: string | null;
  stats: LiveStressStats | null;
  /** Operations per protocol the engine reported ('live' / 'freeze'; 'freeze' when it says none). */
  protocols: Record<string, number>;
  output: string;
}

class Target {
  readonly child: ChildProcess;
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;
  output = '';
  exit: string | null = null;

  constructor(exe: string, args: string[]) {
    this.child = spawn(exe, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      this.output += `${l}\n`;
      this.#lines.push(l);
      this.#wake?.();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.output += d));
    this.child.once('exit', (code, sig) => {
      this.exit = sig ?? `exit ${code}`;
      this.#wake?.();
    });
  }

  async line(re: RegExp): Promise<RegExpExecArray> {
    const deadline = Date.now() + ANSWER_MS;
    for (;;) {
      const l = this.#lines.shift();
      if (l !== undefined) {
        const m = re.exec(l);
        if (m) return m;
        continue;
      }
      if (this.exit !== null) throw new Error(`target ${this.child.pid} died (${this.exit}); output: ${this.output.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`target ${this.child.pid} did not print ${re}`);
      await new Promise<void>((res) => {
        this.#wake = res;
        setTimeout(res, 500);
      });
    }
  }

  async ask(cmd: string, re: RegExp): Promise<RegExpExecArray> {
    this.child.stdin!.write(`${cmd}\n`);
    return this.line(re);
  }

  kill(): void {
    if (this.exit === null) this.child.kill('SIGKILL');
  }
}

function parseStats(line: string): LiveStressStats {
  const get = (k: string): number => Number(new RegExp(`\\b${k}=(\\d+)`).exec(line)?.[1] ?? NaN);
  return {
    iterations: get('iterations'), miniterations: get('miniterations'), mixed: get('mixed'), maxmixed: get('maxmixed'),
    transitions: get('transitions'), maxtransitions: get('maxtransitions'), unmatched: get('unmatched'), wrong: get('wrong'),
    sigcalls: get('sigcalls'), sigwrong: get('sigwrong'), signals: get('signals'), epoch: get('epoch'),
  };
}

/** Runs the stress: `cycles` apply+remove, each operation bracketed in the target's epoch. Always kills the target. */
export async function runLiveStress(build: LiveStressBuild, o: LiveStressOptions): Promise<LiveStressResult> {
  const t = new Target(build.exe, [String(o.workers ?? 8), ...(o.signals ? ['signals'] : [])]);
  const parts = o.splitPerFunction
    ? build.plan.functions.map((f) => ({ id: `live-stress-${f.name}`, plan: { ...build.plan, functions: [f] } }))
    : [{ id: 'live-stress', plan: build.plan }];
  const protocols: Record<string, number> = {};
  const count = (r: object): void => {
    const x = r as { protocol?: string; revived?: boolean };
    const p = `${x.protocol ?? 'freeze'}${x.revived === true ? ' (revived)' : ''}`;
    protocols[p] = (protocols[p] ?? 0) + 1;
  };
  // Spread, not a literal field: `freeze` is unknown to the engine before the zero-stall protocol.
  const extra = o.freeze ? { freeze: true } : {};
  const timeoutMs = o.timeoutMs ?? 10_000;
  const started = Date.now();
  let done = 0;
  let step = 'start';
  try {
    await t.line(/^ready/);
    await t.ask('b', /^B \d+/);
    for (; done < o.cycles; done++) {
      step = 'apply';
      const id = (p: { id: string }): string => (o.alternateIds && done % 2 === 1 ? `${p.id}-b` : p.id);
      for (const p of parts) count(await applyPatch(t.child.pid!, p.plan, { patchId: id(p), timeoutMs, ...extra }));
      await t.ask('n', /^N \d+/);
      step = 'remove';
      for (const p of [...parts].reverse()) count(await removePatch(t.child.pid!, id(p), { timeoutMs, ...extra }));
      const last = done + 1 === o.cycles || (o.deadline !== undefined && Date.now() > o.deadline);
      await t.ask(last ? 'e' : 'n', /^[EN] \d+/);
      if (last) {
        done++;
        break;
      }
      if (o.onProgress && (done + 1) % 100 === 0) o.onProgress(done + 1);
    }
    const stats = parseStats((await t.ask('s', /^stats .*/))[0]);
    return { cycles: done, operations: 2 * done, seconds: (Date.now() - started) / 1000, crashed: null, stats, protocols, output: t.output };
  } catch (e) {
    if (t.exit === null) throw new Error(`${step} of cycle ${done + 1}: ${(e as Error).message}`, { cause: e });
    return { cycles: done, operations: 2 * done, seconds: (Date.now() - started) / 1000, crashed: t.exit, stats: null, protocols, output: t.output };
  } finally {
    t.kill();
  }
}
