/**
 * listPatches: what the in-process record of a process says, read from the target alone (no lock,
 * no ptrace). Used by `hotpatch list`, and the model for how the guard reads the record.
 */
import { openProcess } from '../../process/inspect/index.js';
import type { PatchRecord, RecordArena, RecordTransaction, SiteState } from './record.js';
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
export function listPatches(pid: number): ProcessPatches {
  const proc = openProcess(pid);
  try {
    const exe = proc.getExePath();
    const record = readRecordFromMappings(pid, proc.enumerateMappings());
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

