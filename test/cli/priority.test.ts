/**
 * The CLI runs nicer than the services it works on (src/cli/priority.ts): every thread of the
 * process, those Node started before our code included, gets nice 10 unless HOTPATCH_NICE says
 * otherwise; a CLI started nicer stays as nice as it was.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const MODULE = join(REPO_ROOT, 'dist/src/cli/priority.js');
const FFI = join(REPO_ROOT, 'dist/src/process/ptrace/ffi.js');

interface ThreadScheduling {
  policy: number;
  /** se.slice from /proc/.../sched (ns); undefined on kernels that do not show it. */
  slice: number | undefined;
}

/**
 * Scheduling of every thread of a node process after yieldTimeSlices() and, with `boost`, after
 * boostThread('fifo') (policy of the calling thread while boosted in `boosted`) + restoreThread().
 */
async function schedulingAfter(env: Record<string, string>, boost = false): Promise<{ threads: ThreadScheduling[]; boosted?: number }> {
  const script = `import { readdirSync, readFileSync } from 'node:fs';
const { yieldCpuToTargets, yieldTimeSlices } = await import(${JSON.stringify(MODULE)});
const { boostThread, restoreThread, getSchedulingAttributes } = await import(${JSON.stringify(FFI)});
yieldCpuToTargets();
await yieldTimeSlices();
let boosted;
if (${boost}) { const s = boostThread('fifo'); boosted = getSchedulingAttributes(0).policy; restoreThread(s); }
const threads = readdirSync('/proc/self/task').map((t) => {
  const stat = readFileSync('/proc/self/task/' + t + '/stat', 'utf8');
  const m = /se\\.slice\\s*:\\s*(\\d+)/.exec(readFileSync('/proc/self/task/' + t + '/sched', 'utf8'));
  return { policy: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]), slice: m ? Number(m[1]) : undefined };
});
console.log(JSON.stringify({ threads, boosted }));`;
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'HOTPATCH_NICE'));
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { env: { ...base, ...env } });
  return JSON.parse(stdout) as { threads: ThreadScheduling[]; boosted?: number };
}

/** Nice values of every thread of a node process that called yieldCpuToTargets(), read from /proc/self/task/x/stat. */
async function niceAfter(env: Record<string, string>, prefix: string[] = []): Promise<number[]> {
  const script = `import { readdirSync, readFileSync } from 'node:fs';
const { yieldCpuToTargets } = await import(${JSON.stringify(MODULE)});
yieldCpuToTargets();
const nice = readdirSync('/proc/self/task').map((t) => { const s = readFileSync('/proc/self/task/' + t + '/stat', 'utf8'); return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[16]); });
console.log(JSON.stringify(nice));`;
  const argv = [...prefix, process.execPath, '--input-type=module', '-e', script];
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'HOTPATCH_NICE'));
  const { stdout } = await run(argv[0]!, argv.slice(1), { env: { ...base, ...env } });
  return JSON.parse(stdout) as number[];
}

describe('the CLI yields the CPU to its targets', () => {
  it('sets nice 10 on every thread of the process by default', async () => {
    const def = await niceAfter({});
    expect(def.length).toBeGreaterThan(1); // Node's own threads are there too
    expect(def.every((n) => n === 10)).toBe(true);
  });

  it('follows HOTPATCH_NICE (0 = as started) and never makes a nicer CLI less nice', async () => {
    expect((await niceAfter({ HOTPATCH_NICE: '0' })).every((n) => n === 0)).toBe(true);
    expect((await niceAfter({ HOTPATCH_NICE: '5' })).every((n) => n === 5)).toBe(true);
    expect((await niceAfter({}, ['nice', '-n', '15'])).every((n) => n === 15)).toBe(true);
  });

  it('asks for a 0.1 ms time slice in commands that touch a process, so a waking thread preempts the CLI', async () => {
    const { threads } = await schedulingAfter({});
    expect(threads.length).toBeGreaterThan(1);
    expect(threads.every((t) => t.policy === 0)).toBe(true); // SCHED_OTHER
    // Kernels before 6.12 neither take nor show a slice.
    if (threads[0]!.slice !== undefined) expect(threads.every((t) => t.slice === 100_000)).toBe(true);
  });

  it('runs as SCHED_IDLE with HOTPATCH_NICE=idle and leaves HOTPATCH_NICE=0 as started', async () => {
    expect((await schedulingAfter({ HOTPATCH_NICE: 'idle' })).threads.every((t) => t.policy === 5)).toBe(true);
    const asStarted = (await schedulingAfter({ HOTPATCH_NICE: '0' })).threads;
    expect(asStarted.every((t) => t.policy === 0 && (t.slice === undefined || t.slice !== 100_000))).toBe(true);
  });

  it('raises an idle or short-slice CLI for a freeze and gives it back exactly what it had', async () => {
    for (const env of [{}, { HOTPATCH_NICE: 'idle' }]) {
      const before = (await schedulingAfter(env)).threads[0]!;
      const { threads, boosted } = await schedulingAfter(env, true);
      expect(boosted).toBe(1); // SCHED_FIFO while the target is stopped
      expect(threads[0]).toEqual(before);
    }
  });
});
