/**
 * The in-process patch record: the single source of truth about every patch applied to a process,
 * stored IN the target so that any other hotpatch process, or the guard, can read it from the target
 * alone.
 *
 * Where it lives: a memfd named `hotpatch-record`, created in the target by injected
 * `memfd_create` and mapped there `PROT_READ, MAP_SHARED` (the fd is then closed). It shows in
 * /proc/PID/maps as `/memfd:hotpatch-record (deleted)`, mode `r--s`. The target can never write it
 * (read-only mapping, no fd); hotpatch updates it through /proc/PID/map_files/START-END opened
 * read-write (root only), so it is never writable inside the target, not even during an update.
 * (Anonymous mappings cannot be named on kernels without CONFIG_ANON_VMA_NAME, hence the memfd.)
 *
 * Layout: two slots of RECORD_SLOT_SIZE bytes (slot 0 at offset 0, slot 1 at RECORD_SLOT_SIZE).
 * A writer writes the slot that does NOT hold the newest valid copy — body first, then the 64-byte
 * header — so a writer killed mid-write leaves the previous copy intact. A reader takes the valid
 * slot with the highest generation.
 *
 * Slot header (little-endian):
 *   0  8  magic "HPRECRD\0"
 *   8  4  format version (RECORD_VERSION)
 *  12  4  header size (64)
 *  16  8  generation (u64, +1 per update)
 *  24  4  body length in bytes
 *  28  4  reserved (0)
 *  32 32  SHA-256 of the body
 * Body: UTF-8 JSON of {@link PatchRecord} with addresses as "0x..." strings and bytes as hex.
 */
import { createHash } from 'node:crypto';
import { HotpatchError } from '../../errors.js';
import type { AddressRange } from '../../process/index.js';

export const RECORD_MAGIC = 'HPRECRD\0';
export const RECORD_VERSION = 1;
export const RECORD_HEADER_SIZE = 64;
/** Bytes per slot; tmpfs only allocates pages that are written, so the reservation costs nothing. */
export const RECORD_SLOT_SIZE = 1 << 20;
/** Size of the memfd and of its mapping in the target. */
export const RECORD_FILE_SIZE = 2 * RECORD_SLOT_SIZE;
/** The memfd name: the mapping appears as `/memfd:hotpatch-record (deleted)`. */
export const RECORD_MEMFD_NAME = 'hotpatch-record';
/** Path column of the record mapping in /proc/PID/maps (without " (deleted)"). */
export const RECORD_MAPS_PATH = `/memfd:${RECORD_MEMFD_NAME}`;


/** State of one site (and of a patch as a whole). */
export type SiteState = 'pending' | 'applied' | 'removing' | 'removed';

/** One patched location in the target. */
export interface RecordSite {
  /** Function name (and STT_FILE for a static) in the target module. */
  function: string;
  file?: string;
  kind: 'padded' | 'plain';
  /** Run-time address of the first byte written (padding start, or the 5-byte jump). */
  address: bigint;
  /** Run-time address of the 2-byte switch (padded) or equal to `address` (plain). */
  switchAddress: bigint;
  /** The bytes at [address, address + original.length) before this patch (the layer below it). */
  original: Uint8Array;
  /** The bytes this patch puts there (same length as `original`). */
  written: Uint8Array;
  /** Where the new code of this function lives in the arena. */
  newCode: AddressRange;
  /** SHA-256 (hex) of the new code as linked and written. */
  codeSha256: string;
  state: SiteState;
  /**
   * Switched without a freeze (./gate.ts): the padding's jump leads to this gate, not to `newCode`.
   * After a live remove the padding keeps that jump until the patch's retired code is freed.
   */
  gate?: bigint;
}

/** One resolved relocation, so that a verifier can re-link the signed code and compare. */
export interface RecordRelocation {
  part: 'function' | 'data';
  index: number;
  offset: number;
  type: 'pc32' | 'abs64' | 'abs32' | 'abs32s';
  symbolAddress: bigint;
  addend: bigint;
}

/** A package signature, as stored in the record. */
export interface RecordSigning {
  algorithm: 'ed25519';
  keyId: string;
  /** Signer name claimed in the package (covered by the signature). */
  signer?: string;
  /** Raw 32-byte public key. */
  publicKey: Uint8Array;
  /** Raw 64-byte signature. */
  signature: Uint8Array;
  /** The exact signed message (packageSigningMessage of src/patch/package). */
  message: Uint8Array;
}

/** One applied (or being applied / removed) patch. */
export interface RecordPatch {
  id: string;
  /** SHA-256 (hex) of the package file, or "" when applied from a bare plan. */
  packageHash: string;
  /** Signer key id / fingerprint, or null when unsigned. */
  signer: string | null;
  /**
   * The package's signature as verified at apply time (absent for unsigned packages), so the guard
   * can re-verify it from the target alone: ed25519 over `message`, which holds sha256(`content`).
   */
  signing?: RecordSigning;
  /**
   * The package's content section (the encoded plan + metadata, "CONT" body in src/patch/package),
   * i.e. exactly what was signed: a verifier decodes it to recompute every site's bytes and, with
   * `relocations`, the linked new code, and compares them with memory.
   */
  content?: Uint8Array;
  module: { path: string; name: string; buildId: string; loadBias: bigint };
  state: SiteState;
  /** Milliseconds since the epoch. */
  appliedAt: number;
  /** Code and data of this patch inside the arenas. */
  code: AddressRange;
  data: AddressRange | null;
  /** The patch's variables (PatchData.writable), in a `vars` arena; absent when it adds none. */
  vars?: AddressRange;
  sites: RecordSite[];
  relocations: RecordRelocation[];
  /** Removed but its code could not be freed yet (a thread was still inside it). */
  retired?: boolean;
  /** The new code's unwind information as registered with the target's unwinder (src/patch/engine/unwind.ts). */
  unwind?: RecordUnwind;
  /** Switched without a freeze: the flag byte all of its gates test (1 = new code). */
  flag?: bigint;
}

/**
 * Unwind information registered in the target: written before the registration call and cleared
 * after the deregistration, so it is present whenever the unwinder may know the object.
 */
export interface RecordUnwind {
  /** Run-time address of the `.eh_frame` image (in the patch's data). */
  ehFrame: bigint;
  /** The read-write page holding libgcc's `struct object` for it (at its start). */
  object: AddressRange;
  /** Run-time address of the `__deregister_frame_info` it was registered with (the same libgcc on remove). */
  deregister: bigint;
}

/** What an arena holds: new code, read-only data, or the variables patches add. */
export type ArenaKind = 'code' | 'data' | 'vars';
/** Protection of an arena in the target: never writable and executable at once. */
export type ArenaProtection = 'r-x' | 'r--' | 'rw-';

/** A region mapped in the target to hold patch code or data. */
export interface RecordArena {
  start: bigint;
  end: bigint;
  kind: ArenaKind;
  /** Final protection: "r-x" for code, "r--" for data, "rw-" for variables. */
  prot: ArenaProtection;
  /** Path of the module the arena was placed near (±2 GiB). */
  near: string;
}

/** A transaction in progress (write-ahead): cleared when the operation completes. */
export interface RecordTransaction {
  op: 'apply' | 'remove';
  patchId: string;
  /** PID of the hotpatch process that started it. */
  ownerPid: number;
  startedAt: number;
}

/** The whole record. `patches` is in application order: later entries stack on earlier ones. */
export interface PatchRecord {
  format: 'hotpatch-record';
  version: number;
  /** Target PID when the record was last written (a record inherited by fork names the parent). */
  pid: number;
  generation: bigint;
  transaction: RecordTransaction | null;
  arenas: RecordArena[];
  patches: RecordPatch[];
}

/** The record cannot be parsed or does not fit. */
export class RecordError extends HotpatchError {}

/** An empty record for `pid`. */
export function emptyRecord(pid: number): PatchRecord {
  return { format: 'hotpatch-record', version: RECORD_VERSION, pid, generation: 0n, transaction: null, arenas: [], patches: [] };
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

const HEX_BYTES_RE = /^(?:[0-9a-f]{2})*$/;
const HEX_ADDR_RE = /^0x[0-9a-f]{1,16}$/;

/** Serialises the body (JSON with bigints as 0x-hex and bytes as hex). */
export function encodeRecordBody(record: PatchRecord): Uint8Array {
  const json = JSON.stringify(record, (_k, v: unknown) => {
    if (typeof v === 'bigint') return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
    if (v instanceof Uint8Array) return toHex(v);
    return v;
  });
  return new TextEncoder().encode(json);
}

function fail(detail: string): RecordError {
  return new RecordError(
    'RECORD_CORRUPT',
    `the hotpatch record in the target is malformed (${detail}); it may have been tampered with: do not patch this process, restart it`,
  );
}

/** Field readers that validate while converting back from JSON. */
function addr(v: unknown, what: string): bigint {
  if (typeof v !== 'string' || !HEX_ADDR_RE.test(v)) throw fail(`${what} is not an address`);
  return BigInt(v);
}
function signedBig(v: unknown, what: string): bigint {
  if (typeof v !== 'string' || !/^-?0x[0-9a-f]{1,16}$/.test(v)) throw fail(`${what} is not an integer`);
  return v.startsWith('-') ? -BigInt(v.slice(1)) : BigInt(v);
}
/** Longest hex string accepted for a package content section (the slot bounds it anyway). */
const MAX_CONTENT_HEX = RECORD_SLOT_SIZE * 2;

function bytes(v: unknown, what: string, maxHex = 8192): Uint8Array {
  if (typeof v !== 'string' || v.length > maxHex || !HEX_BYTES_RE.test(v)) throw fail(`${what} is not hex bytes`);
  return new Uint8Array(Buffer.from(v, 'hex'));
}
function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw fail(`${what} is not a string`);
  return v;
}
function int(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw fail(`${what} is not an integer`);
  return v;
}
function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail(`${what} is not an object`);
  return v as Record<string, unknown>;
}
function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw fail(`${what} is not a list`);
  return v;
}
function oneOf<T extends string>(v: unknown, allowed: readonly T[], what: string): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw fail(`${what} is not one of ${allowed.join('/')}`);
  return v as T;
}
function range(v: unknown, what: string): AddressRange {
  const o = obj(v, what);
  const r = { start: addr(o.start, `${what}.start`), end: addr(o.end, `${what}.end`) };
  if (r.end < r.start) throw fail(`${what} ends before it starts`);
  return r;
}

const STATES = ['pending', 'applied', 'removing', 'removed'] as const;

function decodeSite(v: unknown, where: string): RecordSite {
  const o = obj(v, where);
  const site: RecordSite = {
    function: str(o.function, `${where}.function`),
    kind: oneOf(o.kind, ['padded', 'plain'] as const, `${where}.kind`),
    address: addr(o.address, `${where}.address`),
    switchAddress: addr(o.switchAddress, `${where}.switchAddress`),
    original: bytes(o.original, `${where}.original`),
    written: bytes(o.written, `${where}.written`),
    newCode: range(o.newCode, `${where}.newCode`),
    codeSha256: str(o.codeSha256, `${where}.codeSha256`),
    state: oneOf(o.state, STATES, `${where}.state`),
  };
  if (o.file !== undefined) site.file = str(o.file, `${where}.file`);
  if (o.gate !== undefined) site.gate = addr(o.gate, `${where}.gate`);
  if (site.original.length !== site.written.length || site.original.length === 0 || site.original.length > 64) {
    throw fail(`${where}: original and written bytes differ in length or are empty`);
  }
  return site;
}

function decodePatch(v: unknown, where: string): RecordPatch {
  const o = obj(v, where);
  const m = obj(o.module, `${where}.module`);
  const p: RecordPatch = {
    id: str(o.id, `${where}.id`),
    packageHash: str(o.packageHash, `${where}.packageHash`),
    signer: o.signer === null ? null : str(o.signer, `${where}.signer`),
    module: {
      path: str(m.path, `${where}.module.path`),
      name: str(m.name, `${where}.module.name`),
      buildId: str(m.buildId, `${where}.module.buildId`),
      loadBias: addr(m.loadBias, `${where}.module.loadBias`),
    },
    state: oneOf(o.state, STATES, `${where}.state`),
    appliedAt: int(o.appliedAt, `${where}.appliedAt`),
    code: range(o.code, `${where}.code`),
    data: o.data === null ? null : range(o.data, `${where}.data`),
    sites: arr(o.sites, `${where}.sites`).map((s, i) => decodeSite(s, `${where}.sites[${i}]`)),
    relocations: arr(o.relocations, `${where}.relocations`).map((r, i) => {
      const ro = obj(r, `${where}.relocations[${i}]`);
      return {
        part: oneOf(ro.part, ['function', 'data'] as const, 'relocation part'),
        index: int(ro.index, 'relocation index'),
        offset: int(ro.offset, 'relocation offset'),
        type: oneOf(ro.type, ['pc32', 'abs64', 'abs32', 'abs32s'] as const, 'relocation type'),
        symbolAddress: addr(ro.symbolAddress, 'relocation symbolAddress'),
        addend: signedBig(ro.addend, 'relocation addend'),
      };
    }),
  };
  if (o.signing !== undefined) {
    const g = obj(o.signing, `${where}.signing`);
    p.signing = {
      algorithm: oneOf(g.algorithm, ['ed25519'] as const, 'signing.algorithm'),
      keyId: str(g.keyId, 'signing.keyId'),
      publicKey: bytes(g.publicKey, 'signing.publicKey'),
      signature: bytes(g.signature, 'signing.signature'),
      message: bytes(g.message, 'signing.message'),
    };
    if (g.signer !== undefined) p.signing.signer = str(g.signer, 'signing.signer');
  }
  if (o.vars !== undefined) p.vars = range(o.vars, `${where}.vars`);
  if (o.content !== undefined) p.content = bytes(o.content, `${where}.content`, MAX_CONTENT_HEX);
  if (o.retired !== undefined) p.retired = o.retired === true;
  if (o.flag !== undefined) p.flag = addr(o.flag, `${where}.flag`);
  if (o.unwind !== undefined) {
    const u = obj(o.unwind, `${where}.unwind`);
    p.unwind = { ehFrame: addr(u.ehFrame, `${where}.unwind.ehFrame`), object: range(u.object, `${where}.unwind.object`), deregister: addr(u.deregister, `${where}.unwind.deregister`) };
  }
  return p;
}

/** Parses and validates a record body; throws RecordError(RECORD_CORRUPT). */
export function decodeRecordBody(body: Uint8Array, generation: bigint): PatchRecord {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch (e) {
    throw fail(`body is not JSON: ${(e as Error).message}`);
  }
  const o = obj(parsed, 'record');
  if (o.format !== 'hotpatch-record') throw fail('format is not hotpatch-record');
  if (o.version !== RECORD_VERSION) {
    throw new RecordError('RECORD_VERSION', `the hotpatch record has version ${String(o.version)}; this hotpatch reads version ${RECORD_VERSION}: use a matching hotpatch`);
  }
  let transaction: RecordTransaction | null = null;
  if (o.transaction !== null) {
    const t = obj(o.transaction, 'transaction');
    transaction = {
      op: oneOf(t.op, ['apply', 'remove'] as const, 'transaction.op'),
      patchId: str(t.patchId, 'transaction.patchId'),
      ownerPid: int(t.ownerPid, 'transaction.ownerPid'),
      startedAt: int(t.startedAt, 'transaction.startedAt'),
    };
  }
  return {
    format: 'hotpatch-record',
    version: RECORD_VERSION,
    pid: int(o.pid, 'pid'),
    generation,
    transaction,
    arenas: arr(o.arenas, 'arenas').map((a, i) => {
      const ao = obj(a, `arenas[${i}]`);
      const r = range(ao, `arenas[${i}]`);
      return {
        ...r,
        kind: oneOf(ao.kind, ['code', 'data', 'vars'] as const, 'arena kind'),
        prot: oneOf(ao.prot, ['r-x', 'r--', 'rw-'] as const, 'arena prot'),
        near: str(ao.near, 'arena near'),
      };
    }),
    patches: arr(o.patches, 'patches').map((p, i) => decodePatch(p, `patches[${i}]`)),
  };
}

/** Builds one slot (header + body) for `record` at `generation`. */
export function encodeRecordSlot(record: PatchRecord, generation: bigint): Uint8Array {
  const body = encodeRecordBody({ ...record, generation });
  if (RECORD_HEADER_SIZE + body.length > RECORD_SLOT_SIZE) {
    throw new RecordError(
      'RECORD_FULL',
      `the hotpatch record would need ${body.length} bytes, more than the ${RECORD_SLOT_SIZE - RECORD_HEADER_SIZE} it can hold: remove old patches first`,
    );
  }
  const slot = new Uint8Array(RECORD_HEADER_SIZE + body.length);
  const view = new DataView(slot.buffer);
  slot.set(new TextEncoder().encode(RECORD_MAGIC), 0);
  view.setUint32(8, RECORD_VERSION, true);
  view.setUint32(12, RECORD_HEADER_SIZE, true);
  view.setBigUint64(16, generation, true);
  view.setUint32(24, body.length, true);
  view.setUint32(28, 0, true);
  slot.set(createHash('sha256').update(body).digest(), 32);
  slot.set(body, RECORD_HEADER_SIZE);
  return slot;
}

/** Result of looking at one slot. */
export type SlotContent = { valid: true; generation: bigint; body: Uint8Array } | { valid: false; reason: string };

/**
 * Checks one slot's header and checksum. `readAt(offset, length)` reads bytes of the slot.
 * Never throws for bad contents: an invalid slot is normal after an interrupted write.
 */
export function readRecordSlot(readAt: (offset: number, length: number) => Uint8Array): SlotContent {
  const header = readAt(0, RECORD_HEADER_SIZE);
  if (header.length < RECORD_HEADER_SIZE) return { valid: false, reason: 'short header' };
  if (new TextDecoder().decode(header.subarray(0, 8)) !== RECORD_MAGIC) return { valid: false, reason: 'no magic' };
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  if (view.getUint32(12, true) !== RECORD_HEADER_SIZE) return { valid: false, reason: 'bad header size' };
  const generation = view.getBigUint64(16, true);
  const length = view.getUint32(24, true);
  if (length > RECORD_SLOT_SIZE - RECORD_HEADER_SIZE) return { valid: false, reason: 'bad body length' };
  const body = readAt(RECORD_HEADER_SIZE, length);
  if (body.length !== length) return { valid: false, reason: 'short body' };
  const sum = createHash('sha256').update(body).digest();
  if (!sum.equals(Buffer.from(header.buffer, header.byteOffset + 32, 32))) return { valid: false, reason: 'checksum mismatch' };
  if (view.getUint32(8, true) !== RECORD_VERSION) return { valid: false, reason: `version ${view.getUint32(8, true)}` };
  return { valid: true, generation, body };
}

/** Which slot holds the newest valid copy, from the two slot contents. */
export function pickNewestSlot(slots: [SlotContent, SlotContent]): { index: 0 | 1; generation: bigint; body: Uint8Array } | null {
  let best: { index: 0 | 1; generation: bigint; body: Uint8Array } | null = null;
  slots.forEach((s, i) => {
    if (s.valid && (best === null || s.generation > best.generation)) best = { index: i as 0 | 1, generation: s.generation, body: s.body };
  });
  return best;
}
