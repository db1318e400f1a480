/**
 * What debuggers and profilers need to know about a process's patches, read from the target alone
 * (its record and /proc/PID/mem, no ptrace): for every patch whose new code is still mapped
 * (applied, being applied or removed, or retired with a thread possibly still inside), its code
 * range and bytes, one symbol per patched function at its new code, and its `.eh_frame` image.
 */
import { openProcess } from '../../process/inspect/index.js';
import { readRecordFromMappings } from '../engine/record-store.js';
import type { RecordPatch } from '../engine/record.js';
import { ehFrameLength } from './eh-frame-merge.js';
import { HotpatchError } from '../../errors.js';

/** One patched function's new code. */
export interface DebugFunction {
  name: string;
  /** Run-time address and size in bytes of the new code. */
  address: bigint;
  size: bigint;
}

/** One patch as debuggers see it. */
export interface DebugPatch {
  id: string;
  /** Record state, `retired` for a removed patch whose code is still mapped. */
  state: RecordPatch['state'] | 'retired';
  /** Run-time range of the patch's code in its arena, and those bytes as in the target. */
  code: { start: bigint; end: bigint };
  bytes: Uint8Array;
  functions: DebugFunction[];
  /** The registered (or carried) `.eh_frame` image, terminator excluded. */
  ehFrame?: { address: bigint; bytes: Uint8Array };
}

export interface DebugInfo {
  pid: number;
  exe: string;
  patches: DebugPatch[];
}

/** Reads the debug view of the patches of process `pid` (empty when it was never patched). */
export function collectDebugInfo(pid: number): DebugInfo {
  const proc = openProcess(pid);
  try {
    const exe = proc.getExePath();
    const record = readRecordFromMappings(pid, proc.enumerateMappings());
    const patches: DebugPatch[] = [];
    for (const p of record?.patches ?? []) {
      if (p.code.end <= p.code.start) continue;
      const bytes = proc.readMemory(p.code.start, Number(p.code.end - p.code.start));
      const functions = p.sites.map((s) => ({ name: s.function, address: s.newCode.start, size: s.newCode.end - s.newCode.start }));
      const d: DebugPatch = { id: p.id, state: p.retired === true ? 'retired' : p.state, code: { start: p.code.start, end: p.code.end }, bytes, functions };
      const eh = p.unwind?.ehFrame;
      if (eh !== undefined && p.data && eh >= p.data.start && eh < p.data.end) {
        const image = { address: eh, bytes: proc.readMemory(eh, Number(p.data.end - eh)) };
        try {
          d.ehFrame = { address: eh, bytes: image.bytes.slice(0, ehFrameLength(image)) };
        } catch (e) {
          throw new HotpatchError('DEBUG_EH_FRAME', `process ${pid}: the .eh_frame of patch ${p.id} at 0x${eh.toString(16)} cannot be read: ${(e as Error).message}`, { cause: e });
        }
      }
      patches.push(d);
    }
    return { pid, exe, patches };
  } finally {
    proc.close();
  }
}
