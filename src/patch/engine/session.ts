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
      assertOwnRecord(s.record, pid);
    }
  } catch (e) {
    s.close();
    throw e;
  }
  return s;
}

/**
 * A record written for another pid was inherited through fork(): the mapping is MAP_SHARED, so the
 * parent and the child see one file. Changing it for the child would falsify the parent's record.
 */
export function assertOwnRecord(record: PatchRecord, pid: number): void {
  if (record.generation > 0n && record.pid !== pid) {
    throw new HotpatchError(
      'RECORD_INHERITED',
      `process ${pid} inherited the hotpatch record of process ${record.pid} through fork(): its patches (the same as its parent's at fork time) ` +
        `cannot be changed separately; restart the process, or patch and unpatch its parent ${record.pid} before it forks`,
    );
  }
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
