/**
 * Shared plumbing of the engine operations: open the process, take its lock, find and open the
 * record, and the small helpers every operation uses.
 */
import { HotpatchError } from '../../errors.js';
import { openProcess, type Mapping, type Process } from '../../process/index.js';
import { lockProcess, type ProcessLock } from './lock.js';
import { emptyRecord, type PatchRecord } from './record.js';
import { findRecordMapping, RecordStore } from './record-store.js';
import { codeDisagreements } from './stack.js';
import { isInherited } from './inherited.js';
import { privatizeRecord } from './private-record.js';

/** An engine session on one process: process handle, lock, record (store when it exists). */
export interface Session {
  pid: number;
  proc: Process;
  lock: ProcessLock;
  store: RecordStore | undefined;
  record: PatchRecord;
  close(): void;
}

/** Opens `pid` and takes its lock. Always call close(). */
export function openSession(pid: number): Session {
  const proc = openProcess(pid);
  let lock: ProcessLock;
  try {
    lock = lockProcess(pid, proc.startTime);
  } catch (e) {
    proc.close();
    throw e;
  }
  const s: Session = {
    pid,
    proc,
    lock,
    store: undefined,
    record: emptyRecord(pid),
    close() {
      s.store?.close();
      s.proc.close();
      s.lock.release();
    },
  };
  try {
    const m = findRecordMapping(proc.enumerateMappings());
    if (m) {
      s.store = RecordStore.open(pid, m);
      s.record = s.store.record;
      // Inherited through fork: the child gets its own copy before anything reads or changes it.
      if (isInherited(s.record, pid)) privatizeRecord(s);
    }
  } catch (e) {
    s.close();
    throw e;
  }
  return s;
}

/** Opens the record store for a mapping just created at `start` (before /proc/PID/maps is re-read). */
export function openStoreAt(pid: number, start: bigint, size: number): RecordStore {
  const m: Mapping = {
    start,
    end: start + BigInt(size),
    perms: 'r--s',
    protection: { read: true, write: false, execute: false, shared: true },
    fileOffset: 0n,
    dev: '00:00',
    inode: 1,
    path: '/memfd:hotpatch-record',
    deleted: true,
    isFile: true,
  };
  return RecordStore.open(pid, m);
}

/** Refuses to work on a record left mid-transaction by a patcher that died. */
export function assertNoTransaction(record: PatchRecord, pid: number): void {
  const t = record.transaction;
  const unfinished = record.patches.find((p) => p.state === 'pending' || p.state === 'removing');
  if (t || unfinished) {
    const what = t ? `${t.op} of patch ${t.patchId} by hotpatch pid ${t.ownerPid}` : `patch ${unfinished!.id} (${unfinished!.state})`;
    throw new HotpatchError(
      'RECORD_INCOMPLETE',
      `process ${pid} has an unfinished ${what} (the patcher was interrupted): run \`hotpatch recover --pid ${pid}\` first`,
    );
  }
}

/**
 * Throws RECORD_DISAGREES when the code disagrees with the record (see codeDisagreements): an
 * apply would say "already patched" over original code, a remove would find foreign bytes.
 */
export function assertCodeAgrees(s: Session): void {
  const found = codeDisagreements(s.record, (a, n) => s.proc.readMemory(a, n));
  if (found.length > 0) {
    throw new HotpatchError('RECORD_DISAGREES', `process ${s.pid}: ${found[0]}${found.length > 1 ? ` (and ${found.length - 1} more)` : ''}; something changed the code without hotpatch: run \`hotpatch recover --pid ${s.pid}\` to reconcile, then retry; nothing was changed`);
  }
}

export function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

export function nowMicros(): number {
  return Number(process.hrtime.bigint() / 1000n);
}


export { livePatches, siteStack } from './stack.js';
