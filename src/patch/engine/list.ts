/**
 * listPatches: what the in-process record of a process says, read from the target alone (no lock,
 * no ptrace). Used by `hotpatch list`, and the model for how the guard reads the record.
 */
import { readFileSync } from 'node:fs';
import { decodePackageContent } from '../package/codec.js';
import { HotpatchError } from '../../errors.js';
import { enumerateProcessIds, openProcess, type Process } from '../../process/inspect/index.js';
import { RECORD_MAPS_PATH, type PatchRecord, type RecordArena, type RecordTransaction, type RecordPatch, type SiteState } from './record.js';
import { readRecordFromMappings } from './record-store.js';
import { codeDisagreements } from './stack.js';

export interface ListedSite {
  function: string;
  file?: string;
  kind: 'padded' | 'plain';
  address: bigint;
  newCode: bigint;
  state: SiteState;
}

export interface ListedPatch {
  id: string;
  /** Path of the patched module. */
  module: string;
  buildId: string;
  functions: string[];
  signer: string | null;
  packageHash: string;
  /** `applied`, `pending`/`removing` (interrupted: run recover), or `retired` (removed, code not yet freed). */
  state: SiteState | 'retired';
  appliedAt: number;
  sites: ListedSite[];
}

export interface PatchMeta {
  description: string | null;
  cves: string[];
  severity: string | null;
}

export interface ProcessPatches {
  pid: number;
  exe: string;
  patches: ListedPatch[];
  arenas: RecordArena[];
  transaction: RecordTransaction | null;
  /** The raw record (null when the process was never patched). */
  record: PatchRecord | null;
  /**
   * Sites whose code disagrees with the record (no operation in progress): an applied patch's
   * jump is gone, or a removed patch's jump is back. `hotpatch recover` reconciles them.
   */
  disagreements: string[];
}

/** Lists the patches recorded in process `pid`. */
/**
 * The record as it is now. Another hotpatch process may unmap it (the last patch removed) or map a
 * new one between our reading /proc/PID/maps and opening the mapping: read the maps again then.
 */
function readRecordNow(pid: number, proc: Process): PatchRecord | null {
  for (let attempt = 0; ; attempt++) {
    try {
      return readRecordFromMappings(pid, proc.enumerateMappings());
    } catch (e) {
      if (attempt >= 4 || !(e instanceof HotpatchError) || e.code !== 'PROCESS_NOT_FOUND' || !proc.isAlive()) throw e;
    }
  }
}

export function listPatches(pid: number): ProcessPatches {
  const proc = openProcess(pid);
  try {
    const exe = proc.getExePath();
    const record = readRecordNow(pid, proc);
    if (!record) return { pid, exe, patches: [], arenas: [], transaction: null, record: null, disagreements: [] };
    const patches: ListedPatch[] = record.patches.map((p) => ({
      id: p.id,
      module: p.module.path,
      buildId: p.module.buildId,
      functions: p.sites.map((x) => x.function),
      signer: p.signer,
      packageHash: p.packageHash,
      state: p.state === 'removed' ? 'retired' : p.state,
      appliedAt: p.appliedAt,
      sites: p.sites.map((x) => {
        const l: ListedSite = { function: x.function, kind: x.kind, address: x.address, newCode: x.newCode.start, state: x.state };
        if (x.file !== undefined) l.file = x.file;
        return l;
      }),
    }));
    const disagreements = record.transaction ? [] : codeDisagreements(record, (a, n) => proc.readMemory(a, n));
    return { pid, exe, patches, arenas: record.arenas, transaction: record.transaction, record, disagreements };
  } finally {
    proc.close();
  }
}


/**
 * The signed metadata of a recorded patch, decoded from the package content the record keeps (null
 * for a record without it). Not part of listPatches: the agent and the updater list records on
 * every decision and need no metadata; `hotpatch list` asks for it.
 */
export function recordedMeta(p: RecordPatch): PatchMeta | null {
  if (!p.content) return null;
  try {
    const { meta } = decodePackageContent(p.content);
    return { description: meta.description ?? null, cves: meta.cves ?? [], severity: meta.severity ?? null };
  } catch {
    return null;
  }
}

/** PIDs (other than ours) whose /proc/PID/maps shows a hotpatch record: a cheap text search, no parsing. */
export function findPatchedProcesses(): number[] {
  const out: number[] = [];
  for (const pid of enumerateProcessIds()) {
    if (pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/maps`, 'latin1').includes(RECORD_MAPS_PATH)) out.push(pid);
    } catch {
      /* exited or not ours to read */
    }
  }
  return out;
}
