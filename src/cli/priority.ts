/**
 * The CLI yields the CPU to the services it works on. On a machine with few cores, the CLI's own
 * CPU use (Node start, module loading, ELF parsing) is what a busy target's threads feel most while
 * a patch is switched without a freeze: measured with bench/felt-stall.ts's probe on 2 cores, one
 * thread in a tight loop felt 7.9 ms around an apply at nice 0 and 0.3 ms at nice 10. The moments
 * that need the CPU (a thread stopped for a check or a freeze) raise the calling thread for their
 * duration (src/process/ptrace/ffi.ts boostThread), whatever the nice value is outside them.
 *
 * Nice alone is not enough for threads that sleep and wake (a server between requests): on an
 * EEVDF kernel (>= 6.6) a waking thread does not preempt the CLI before the CLI's time slice
 * (1.4 ms here) is used up, so commands that touch a process also ask for a 0.1 ms slice
 * (kernel >= 6.12; older kernels ignore it). Measured with bench/felt-stall.ts at 8 paced probe
 * threads (16 samples each): live apply/remove excess over the baseline 3083 µs at nice 10,
 * 997 µs with the short slice, 101 µs as SCHED_IDLE (`HOTPATCH_NICE=idle`: the CLI then runs only
 * on CPU nothing else wants — on a saturated machine it crawls, so it is not the default).
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/** Nice value the CLI runs at unless HOTPATCH_NICE says otherwise (0 = as started). */
export const DEFAULT_CLI_NICE = 10;
/** Time slice a process-touching command asks for (ns; the kernel's minimum is 0.1 ms). */
export const CLI_TIME_SLICE_NS = 100_000n;

function wantedNice(env: NodeJS.ProcessEnv): number {
  if (env.HOTPATCH_NICE === 'idle') return 19;
  return env.HOTPATCH_NICE === undefined ? DEFAULT_CLI_NICE : Number(env.HOTPATCH_NICE);
}

function ownThreads(): number[] {
  try {
    return readdirSync('/proc/self/task').map(Number);
  } catch {
    return [0];
  }
}

/**
 * Raises the nice value of every thread of this process (Linux nice is per thread; threads created
 * later inherit it) to `HOTPATCH_NICE` (default DEFAULT_CLI_NICE; `idle`: 19 until
 * yieldTimeSlices), never lowering one started nicer. Best effort: a value that is not 0–19 or
 * `idle`, or a thread gone meanwhile, changes nothing.
 */
export function yieldCpuToTargets(env: NodeJS.ProcessEnv = process.env): void {
  const wanted = wantedNice(env);
  if (!Number.isInteger(wanted) || wanted <= 0 || wanted > 19) return;
  for (const tid of ownThreads()) {
    try {
      if (getPriority(tid) < wanted) setPriority(tid, wanted);
    } catch {
      /* the thread exited, or the system refuses: run as started */
    }
  }
}

/**
 * For commands that touch a process (called once the FFI is loaded anyway): every thread of this
 * process (threads created later inherit it) asks for a CLI_TIME_SLICE_NS slice at its nice
 * value, or becomes SCHED_IDLE with `HOTPATCH_NICE=idle`. Threads not under SCHED_OTHER (started
 * real-time or idle by the caller) and `HOTPATCH_NICE=0` are left as they are. Best effort.
 */
export async function yieldTimeSlices(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (env.HOTPATCH_NICE === '0') return;
  const idle = env.HOTPATCH_NICE === 'idle';
  const { getSchedulingAttributes, setSchedulingAttributes, SCHED_IDLE, SCHED_OTHER } = await import('../process/ptrace/ffi.js');
  for (const tid of ownThreads()) {
    const attr = getSchedulingAttributes(tid);
    if (attr === undefined || attr.policy !== SCHED_OTHER) continue;
    setSchedulingAttributes(tid, idle ? { ...attr, policy: SCHED_IDLE, runtimeNs: 0n } : { ...attr, runtimeNs: CLI_TIME_SLICE_NS });
  }
}
