/**
 * The CLI yields the CPU to the services it works on. On a machine with few cores, the CLI's own
 * CPU use (Node start, module loading, ELF parsing) is what a busy target's threads feel most while
 * a patch is switched without a freeze: measured with bench/felt-stall.ts's probe on 2 cores, one
 * thread in a tight loop felt 7.9 ms around an apply at nice 0 and 0.3 ms at nice 10. The moments
 * that need the CPU (a thread stopped for a check or a freeze) raise the calling thread for their
 * duration (src/process/ptrace/ffi.ts boostThread), whatever the nice value is outside them.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/** Nice value the CLI runs at unless HOTPATCH_NICE says otherwise (0 = as started). */
export const DEFAULT_CLI_NICE = 10;

/**
 * Raises the nice value of every thread of this process (Linux nice is per thread; threads created
 * later inherit it) to `HOTPATCH_NICE` (default DEFAULT_CLI_NICE), never lowering one started
 * nicer. Best effort: a value that is not 0–19, or a thread gone meanwhile, changes nothing.
 */
export function yieldCpuToTargets(env: NodeJS.ProcessEnv = process.env): void {
  const wanted = env.HOTPATCH_NICE === undefined ? DEFAULT_CLI_NICE : Number(env.HOTPATCH_NICE);
  if (!Number.isInteger(wanted) || wanted <= 0 || wanted > 19) return;
  let tids: number[];
  try {
    tids = readdirSync('/proc/self/task').map(Number);
  } catch {
    tids = [0];
  }
  for (const tid of tids) {
    try {
      if (getPriority(tid) < wanted) setPriority(tid, wanted);
    } catch {
      /* the thread exited, or the system refuses: run as started */
    }
  }
}
