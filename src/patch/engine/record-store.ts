/**
 * Finding, reading and updating the in-process record (format in ./record.ts) of a live process.
 * Reading needs nothing but /proc: the guard and other hotpatch processes use {@link readRecord}.
 * Updating goes through /proc/PID/map_files/START-END opened read-write, so the mapping stays
 * read-only inside the target at all times.
 */
import { closeSync, fstatSync, openSync, writeSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import { readFileRange, readMemory, type Mapping } from '../../process/inspect/index.js';
import { inheritedView, isInherited } from './inherited.js';
import {
  decodeRecordBody,
  emptyRecord,
  encodeRecordSlot,
  pickNewestSlot,
  readRecordSlot,
  RECORD_FILE_SIZE,
  RECORD_MAPS_PATH,
  RECORD_SLOT_SIZE,
  RecordError,
  type PatchRecord,
} from './record.js';

/**
 * The record mapping among `mappings` (path `/memfd:hotpatch-record`, shared, read-only), or
 * undefined. Two candidates is an error: something imitates the record.
 */
export function findRecordMapping(mappings: readonly Mapping[]): Mapping | undefined {
  const found = mappings.filter((m) => m.path === RECORD_MAPS_PATH && m.isFile);
  if (found.length > 1) {
    throw new RecordError(
      'RECORD_AMBIGUOUS',
      `the target has ${found.length} mappings named ${RECORD_MAPS_PATH}; only hotpatch creates one: something imitates the record, investigate before patching`,
    );
  }
  const m = found[0];
  if (m && (m.end - m.start !== BigInt(RECORD_FILE_SIZE) || m.protection.write || m.protection.execute || !m.protection.shared)) {
    throw new RecordError('RECORD_BAD_MAPPING', `the ${RECORD_MAPS_PATH} mapping at 0x${m.start.toString(16)} (${m.perms}) is not one hotpatch made; investigate before patching`);
  }
  return m;
}

function mapFilesPath(pid: number, m: Mapping): string {
  return m.mapFilesPath ?? `/proc/${pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`;
}


function readFromFd(fd: number, pid: number): { record: PatchRecord; slot: 0 | 1 | null } {
  let newest: ReturnType<typeof pickNewestSlot> = null;
  // A record shared with a forked child or parent may be written while we read it: both slots
  // torn at once is possible (two writes in a row); a writer finishes a slot in microseconds.
  for (let attempt = 0; attempt < 3 && !newest; attempt++) {
    const slots = ([0, 1] as const).map((i) => readRecordSlot((off, len) => readFileRange(fd, i * RECORD_SLOT_SIZE + off, len))) as [
      ReturnType<typeof readRecordSlot>,
      ReturnType<typeof readRecordSlot>,
    ];
    newest = pickNewestSlot(slots);
    if (slots.every((x) => !x.valid && x.reason === 'no magic')) break; // never written
  }
  if (!newest) return { record: emptyRecord(pid), slot: null };
  return { record: decodeRecordBody(newest.body, newest.generation), slot: newest.index };
}

function openMapFile(pid: number, m: Mapping, flags: 'r' | 'r+'): number {
  try {
    return openSync(mapFilesPath(pid, m), flags);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') throw new ProcessError('PROCESS_NOT_FOUND', `process ${pid} exited (or unmapped its hotpatch record)`, { cause: e });
    throw new ProcessError('PROCESS_PERMISSION_DENIED', `cannot open the hotpatch record of process ${pid} (${code ?? 'error'}): run as root`, { cause: e });
  }
}

/**
 * Reads the record of `pid` from the target alone. Returns null when the process has never been
 * patched (no record mapping). Throws RecordError when a record exists but cannot be read.
 */
export function readRecordFromMappings(pid: number, mappings: readonly Mapping[]): PatchRecord | null {
  const m = findRecordMapping(mappings);
  if (!m) return null;
  const fd = openMapFile(pid, m, 'r');
  try {
    return ownView(readFromFd(fd, pid).record, pid, mappings);
  } finally {
    closeSync(fd);
  }
}

/** `record` as process `pid` sees it: itself, or for a record inherited through fork, the child's own view (./inherited.ts). */
export function ownView(record: PatchRecord, pid: number, mappings: readonly Mapping[]): PatchRecord {
  if (!isInherited(record, pid)) return record;
  return inheritedView(record, pid, mappings, (a, n) => {
    try {
      return readMemory(pid, a, n);
    } catch {
      return undefined;
    }
  });
}

/**
 * Writes `record` as generation `record.generation + 1` into slot 0 of the empty record file at
 * `path` (a fresh memfd of the target, before it is mapped).
 */
export function writeFreshRecord(path: string, record: PatchRecord): void {
  const fd = openSync(path, 'r+');
  try {
    writeFully(fd, encodeRecordSlot(record, record.generation + 1n), 0);
  } finally {
    closeSync(fd);
  }
}

/** An open, writable record of one process (the engine holds the process lock while using it). */
export class RecordStore {
  readonly pid: number;
  readonly mapping: Mapping;
  #fd: number;
  #record: PatchRecord;
  #slot: 0 | 1 | null;

  private constructor(pid: number, mapping: Mapping, fd: number) {
    this.pid = pid;
    this.mapping = mapping;
    this.#fd = fd;
    const { record, slot } = readFromFd(fd, pid);
    this.#record = record;
    this.#slot = slot;
  }

  /** Opens the record mapping `m` of `pid` for update. */
  static open(pid: number, m: Mapping): RecordStore {
    const fd = openMapFile(pid, m, 'r+');
    try {
      return new RecordStore(pid, m, fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** The record as last read or written (callers must not mutate it; use write()). */
  get record(): PatchRecord {
    return this.#record;
  }

  /** Re-reads the record from the target. */
  reload(): PatchRecord {
    const { record, slot } = readFromFd(this.#fd, this.pid);
    this.#record = record;
    this.#slot = slot;
    return record;
  }

  /**
   * Writes `record` as the next generation into the slot not holding the current copy: body
   * first, header last, so an interrupted write leaves the previous generation readable.
   */
  write(record: PatchRecord): PatchRecord {
    const generation = this.#record.generation + 1n;
    const next: PatchRecord = { ...record, pid: this.pid, generation };
    const bytes = encodeRecordSlot(next, generation);
    const slot: 0 | 1 = this.#slot === 0 ? 1 : 0;
    const base = slot * RECORD_SLOT_SIZE;
    const HEADER = 64;
    writeFully(this.#fd, bytes.subarray(HEADER), base + HEADER);
    writeFully(this.#fd, bytes.subarray(0, HEADER), base);
    this.#record = next;
    this.#slot = slot;
    return next;
  }

  /** Inode of the record file: every process mapping the same inode shares this record. */
  inode(): number {
    return fstatSync(this.#fd).ino;
  }

  close(): void {
    if (this.#fd >= 0) closeSync(this.#fd);
    this.#fd = -1;
  }
}

function writeFully(fd: number, bytes: Uint8Array, offset: number): void {
  let done = 0;
  while (done < bytes.length) {
    done += writeSync(fd, bytes, done, bytes.length - done, offset + done);
  }
}
