// TEMPORARY (replaced by the hijack branch's control.ts wrappers).
import { freeze, type Frozen } from './control.js';
import type { AddressRange } from '../../process/index.js';
export function hijack(pid: number, timeoutMs?: number): Frozen {
  return freeze(pid, timeoutMs);
}
export async function rollingCheck(pid: number, ranges: readonly AddressRange[], timeoutMs?: number): Promise<{ inUse: boolean[]; threads: number; maxStopMicros: number }> {
  const f = freeze(pid, timeoutMs);
  try {
    const uses = f.threadsUsing(ranges);
    return { inUse: ranges.map((_, i) => uses.some((u) => u.rangeIndex === i)), threads: f.threadCount, maxStopMicros: 0 };
  } finally {
    f.thaw();
  }
}
