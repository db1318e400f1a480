/** `list`: every patched process and its patches, read from the targets' own records. */
import type { ProcessPatches } from '../engine/index.js';
import { findPatchedProcesses } from './discover.js';

/**
 * The processes that carry a patch record (every process, or just `pids`), each with its patches
 * (state `applied`, `pending`/`removing` when interrupted — run recover —, or `retired`).
 * Reading needs no lock and no ptrace.
 */
export function listPatchedProcesses(pids?: readonly number[]): ProcessPatches[] {
  return findPatchedProcesses(pids).sort((a, b) => a.pid - b.pid);
}
