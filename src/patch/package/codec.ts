/**
 * The hotpatch package file (`.hpk`): encoder and strict decoder.
 *
 * Format version 1. All integers little-endian; `str` = u16 byte length + UTF-8 (strict);
 * `opt<X>` = u8 flag (0 absent, 1 present) then X; `bytes32` = u32 length + bytes.
 *
 *   file    = header section*
 *   header  = "HOTPATCH" (8 bytes) | u16 formatVersion (=1) | u16 flags (=0)
 *   section = tag (4 ASCII letters) | u32 length | body[length]
 *             "CONT" required, first; "COLD" optional; "SIGN" optional, last.
 *             An unknown tag starting with a lowercase letter is ancillary: skipped, never signed.
 *             An unknown tag starting with an uppercase letter is critical: the package needs a newer
 *             hotpatch (PACKAGE_UNSUPPORTED_VERSION).
 *   CONT    = meta target u32 nFunctions function* u32 nData data* [vars] [unwind]
 *     meta     = str createdAt | str toolVersion | opt<str> description
 *              | u8 2 (extended meta) opt<str> description | u8 nCves | str cve* | opt<str> severity
 *                -- the description flag byte 2 introduces the extended form, written only when
 *                   the package carries CVE ids or a severity, so older packages (flag 0/1) keep
 *                   their bytes and ids; an older hotpatch rejects flag 2 as damaged.
 *     target   = str buildId (lowercase hex) | str name | u64 size
 *     function = str name | opt<str> file | u64 vaddr | u32 size | oldHash (32 raw bytes)
 *                | entry | bytes32 code | u32 align | relocs
 *     entry    = u8 kind (1 padded, 2 plain) | u64 siteVaddr | u64 switchVaddr | u8 n | expected[n]
 *     data     = str name | bytes32 bytes | u32 align | relocs
 *     vars     = u8 1 | u32 n | (u32 dataIndex | u32 zeroSize)*   -- the data that are variables
 *                (PatchData.writable), indexes strictly increasing; zeroSize > 0: the variable is
 *                zeroSize zero bytes and its `bytes` are encoded empty.
 *     unwind   = u8 2 | u32 ehFrame (index of the data item holding the .eh_frame image)
 *                Each optional part is written only when the plan has it, in the order of their
 *                tags, so packages without them keep their bytes and ids; an older hotpatch
 *                rejects a package with them as damaged (stray bytes).
 *     relocs   = u32 n | reloc*
 *     reloc    = u32 offset | u8 type (1 pc32, 2 abs64, 3 abs32, 4 abs32s) | i64 addend | target
 *     target   = u8 1 (module) u64 vaddr
 *              | u8 2 (symbol) str name | opt<str> version | opt<str> file
 *              | u8 3 (local) u8 part (1 function, 2 data) | u32 index | u32 offset
 *   COLD    = u8 compression (1 zlib, 2 brotli) | u32 mode | u64 size | sha256 (32 raw bytes)
 *             | str buildId | bytes32 compressed   -- the complete fixed file, for `apply --cold`
 *   SIGN    = u8 algorithm (1 ed25519) | publicKey (32 raw bytes) | str keyId | opt<str> signer
 *             | signature (64 raw bytes)
 *
 * Patch id: the first 16 hex digits of sha256(CONT body). Signing does not change it.
 * Signed message (ed25519 over these bytes): "hotpatch-package-signature-v1\0" | u16 formatVersion
 *   | sha256(CONT body) | sha256(COLD body) or 32 zero bytes | opt<str> signer.
 * Key id: the first 16 hex digits of sha256(raw 32-byte ed25519 public key).
 *
 * The decoder is canonical: it re-encodes what it decoded and rejects any body that does not come
 * out byte for byte, so a decoded package re-encodes to the bytes that were signed. Every count and
 * length is checked against the bytes left before use; semantic fields are validated (see
 * `validatePlan`). Hostile input yields a PackageError, never a crash or an unbounded allocation.
 */
import type { ErrorCode } from '../../errors.js';
import { createHash } from 'node:crypto';
import { ElfError, PackageError } from '../../errors.js';
import { parseEhFrame } from '../../elf/eh-frame.js';
import type {
  EntryPlan,
  PatchData,
  PatchFunction,
  PatchPlan,
  Relocation,
  RelocationTarget,
  RelocationType,
} from '../plan.js';
import { ByteReader, ByteWriter, U64_MAX } from './binary.js';
import { CVE_ID, MAX_CVES, PATCH_SEVERITIES, type PatchSeverity } from './metadata.js';

export { CVE_ID, MAX_CVES, PATCH_SEVERITIES, type PatchSeverity } from './metadata.js';

/** The 8-byte magic at the start of every package. */
export const PACKAGE_MAGIC = new TextEncoder().encode('HOTPATCH');
/** The format version this code writes and reads. */
export const PACKAGE_FORMAT_VERSION = 1;
/** Version of the tool recorded in package metadata. */
export const HOTPATCH_TOOL_VERSION = '0.1.0';

/** Largest package file accepted (the cold payload of a big binary fits comfortably). */
export const MAX_PACKAGE_SIZE = 1 << 30;
/** Largest decompressed cold payload accepted (hard ceiling for `maxOutputLength`). */
export const MAX_COLD_SIZE = 1 << 30;
/** Largest new code of one function / one data blob. */
export const MAX_CODE_SIZE = 16 << 20;
export const MAX_DATA_SIZE = 64 << 20;
/** Bounds of EntryPlan.expected: a 2-byte switch at least; padding + switch at most. */
export const MIN_EXPECTED_BYTES = 2;
export const MAX_EXPECTED_BYTES = 32;
/** Largest alignment of new code or data in the arena (one page). */
export const MAX_ALIGN = 4096;

/** Form byte of the optional unwind trailer of CONT. */
/** Tags of the optional parts after the data (see CONT above), in the order they are written. */
const VARIABLES_PART = 1;
const UNWIND_PART = 2;

const SIGNATURE_DOMAIN = new TextEncoder().encode('hotpatch-package-signature-v1\0');

/** Metadata recorded at build time (covered by the id and the signature). */
export interface PackageMeta {
  /** ISO 8601 time the package was built. */
  createdAt: string;
  /** Version of hotpatch that built it. */
  toolVersion: string;
  description?: string;
  /** CVE ids the patch fixes ("CVE-2024-1234"), in the order given at build time. */
  cves?: string[];
  /** How urgent the fix is. */
  severity?: PatchSeverity;
}


/** The complete fixed file, compressed, for installing on disk (`apply --cold`). */
export interface PackageColdPayload {
  compression: 'zlib' | 'brotli';
  /** File mode (permission bits, e.g. 0o755) of the fixed file. */
  mode: number;
  /** Size of the decompressed file in bytes. */
  size: number;
  /** SHA-256 (lowercase hex) of the decompressed file. */
  sha256: string;
  /** GNU build-id (lowercase hex) of the fixed file. */
  buildId: string;
  /** The compressed bytes. */
  data: Uint8Array;
}

/** A detached ed25519 signature over the content and the cold payload. */
export interface PackageSignature {
  algorithm: 'ed25519';
  /** Raw 32-byte ed25519 public key of the signer. */
  publicKey: Uint8Array;
  /** Fingerprint of `publicKey`: first 16 hex digits of its SHA-256. */
  keyId: string;
  /** Signer name as claimed at signing time (covered by the signature; trust decides via keys). */
  signer?: string;
  /** 64-byte ed25519 signature of `packageSigningMessage`. */
  signature: Uint8Array;
}

/** A decoded package. `id` is derived from the content; signing never changes it. */
export interface PatchPackage {
  formatVersion: number;
  id: string;
  plan: PatchPlan;
  meta: PackageMeta;
  cold?: PackageColdPayload;
  signature?: PackageSignature;
}

const RELOC_TYPES: readonly RelocationType[] = ['pc32', 'abs64', 'abs32', 'abs32s'];
/** Width in bytes of the field each relocation type writes. */
export const RELOCATION_WIDTH: Readonly<Record<RelocationType, number>> = { pc32: 4, abs64: 8, abs32: 4, abs32s: 4 };

const HEX_BUILD_ID = /^(?:[0-9a-f]{2}){1,64}$/;
const HEX_SHA256 = /^[0-9a-f]{64}$/;

function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function fromHex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'hex'));
}

/** The key id (fingerprint) of a raw ed25519 public key: first 16 hex digits of its SHA-256. */
export function keyIdOf(publicKey: Uint8Array): string {
  return toHex(sha256(publicKey)).slice(0, 16);
}

// ---------------------------------------------------------------------------------------------
// Validation, shared by encoder (code PACKAGE_INVALID: a bug in whoever built the plan) and
// decoder (code PACKAGE_CORRUPT: a damaged or hostile file).

type Fail = (msg: string) => never;

function failWith(code: ErrorCode): Fail {
  return (msg: string) => {
    throw new PackageError(
      code,
      code === 'PACKAGE_INVALID'
        ? `cannot write package: ${msg} (a bug in the plan's producer; report it)`
        : `package is damaged or hostile: ${msg}; rebuild or re-download it`,
    );
  };
}

function checkAlign(align: number, where: string, fail: Fail): void {
  if (!Number.isInteger(align) || align < 1 || align > MAX_ALIGN || (align & (align - 1)) !== 0) {
    fail(`${where}: alignment ${align} is not a power of two between 1 and ${MAX_ALIGN}`);
  }
}

function checkU64(v: bigint, where: string, fail: Fail): void {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) fail(`${where}: ${String(v)} is not a 64-bit address`);
}

function checkStr(s: unknown, where: string, fail: Fail, nonEmpty = false): void {
  if (typeof s !== 'string') fail(`${where} is not a string`);
  const n = Buffer.byteLength(s as string, 'utf8');
  if (n > 0xffff) fail(`${where} is longer than 65535 bytes`);
  if (nonEmpty && n === 0) fail(`${where} is empty`);
}

function checkRelocations(
  relocs: readonly Relocation[],
  size: number,
  where: string,
  plan: PatchPlan,
  fail: Fail,
): void {
  relocs.forEach((r, i) => {
    const at = `${where} relocation ${i}`;
    if (!RELOC_TYPES.includes(r.type)) fail(`${at}: unknown type ${String(r.type)}`);
    const width = RELOCATION_WIDTH[r.type];
    if (!Number.isInteger(r.offset) || r.offset < 0 || r.offset + width > size) {
      fail(`${at}: field at offset ${r.offset} (+${width}) lies outside the ${size} bytes it relocates`);
    }
    if (typeof r.addend !== 'bigint' || r.addend < -(1n << 63n) || r.addend >= 1n << 63n) {
      fail(`${at}: addend ${String(r.addend)} is not a signed 64-bit value`);
    }
    const t = r.target;
    switch (t.kind) {
      case 'module':
        checkU64(t.vaddr, `${at} target`, fail);
        break;
      case 'symbol':
        checkStr(t.name, `${at} symbol name`, fail, true);
        if (t.version !== undefined) checkStr(t.version, `${at} symbol version`, fail);
        if (t.file !== undefined) checkStr(t.file, `${at} symbol file`, fail);
        break;
      case 'local': {
        const parts = t.part === 'function' ? plan.functions : t.part === 'data' ? plan.data : undefined;
        if (!parts) fail(`${at}: unknown local part ${String(t.part)}`);
        if (!Number.isInteger(t.index) || t.index < 0 || t.index >= parts!.length) {
          fail(`${at}: local ${t.part} index ${t.index} is out of range (${parts!.length} present)`);
        }
        const p = parts![t.index]!;
        const len = 'code' in p ? p.code.byteLength : p.bytes.byteLength;
        if (!Number.isInteger(t.offset) || t.offset < 0 || t.offset > len) {
          fail(`${at}: offset ${t.offset} lies outside local ${t.part} ${t.index} (${len} bytes)`);
        }
        break;
      }
      default:
        fail(`${at}: unknown target kind ${String((t as { kind: unknown }).kind)}`);
    }
  });
}

function checkEntry(f: PatchFunction, where: string, fail: Fail): void {
  const e = f.entry;
  if (e.kind !== 'padded' && e.kind !== 'plain') fail(`${where}: unknown entry kind ${String(e.kind)}`);
  checkU64(e.siteVaddr, `${where} site`, fail);
  checkU64(e.switchVaddr, `${where} switch`, fail);
  const n = e.expected?.byteLength;
  if (!(e.expected instanceof Uint8Array) || n < MIN_EXPECTED_BYTES || n > MAX_EXPECTED_BYTES) {
    fail(`${where}: original entry bytes are ${String(n)} long, expected ${MIN_EXPECTED_BYTES}..${MAX_EXPECTED_BYTES}`);
  }
  const end = f.vaddr + BigInt(f.size);
  if (e.kind === 'padded') {
    // Padding (jmp rel32 goes there) lies before the switch; expected covers padding + 2-byte switch.
    // At least a 5-byte jmp rel32 fits in the padding before the switch.
    if (e.switchVaddr < e.siteVaddr + 5n || e.switchVaddr - e.siteVaddr + 2n !== BigInt(n)) {
      fail(`${where}: padded entry site 0x${e.siteVaddr.toString(16)} / switch 0x${e.switchVaddr.toString(16)} do not match ${n} original bytes`);
    }
    if (e.switchVaddr < f.vaddr || e.switchVaddr + 2n > end) fail(`${where}: switch instruction lies outside the function`);
  } else {
    if (n !== 5) fail(`${where}: a plain entry covers 5 original bytes (one jmp rel32), has ${n}`);
    if (e.switchVaddr !== e.siteVaddr) fail(`${where}: a plain entry has no separate switch address`);
    if (e.siteVaddr < f.vaddr || e.siteVaddr + 5n > end) fail(`${where}: 5-byte jump site lies outside the function`);
  }
}

/**
 * Checks a plan's semantic invariants: alignments, sizes, entry plans, relocation fields inside
 * their code and local relocation targets in range, hex identities. Throws PackageError with `code`.
 */
export function validatePlan(plan: PatchPlan, code: 'PACKAGE_INVALID' | 'PACKAGE_CORRUPT' = 'PACKAGE_INVALID'): void {
  const fail = failWith(code);
  const t = plan.target;
  if (typeof t.buildId !== 'string' || !HEX_BUILD_ID.test(t.buildId)) fail(`target build-id ${JSON.stringify(t.buildId)} is not lowercase hex`);
  checkStr(t.name, 'target name', fail, true);
  if (!Number.isSafeInteger(t.size) || t.size < 0) fail(`target size ${t.size} is not a file size`);
  const seen = new Set<bigint>();
  plan.functions.forEach((f, i) => {
    const where = `function ${i} (${typeof f.name === 'string' ? f.name.slice(0, 80) : '?'})`;
    checkStr(f.name, `${where} name`, fail, true);
    if (f.file !== undefined) checkStr(f.file, `${where} file`, fail);
    checkU64(f.vaddr, where, fail);
    if (!Number.isInteger(f.size) || f.size < 1 || f.size > 0xffffffff) fail(`${where}: size ${f.size} out of range`);
    if (f.vaddr + BigInt(f.size) > U64_MAX) fail(`${where}: extends past the end of the address space`);
    if (seen.has(f.vaddr)) fail(`${where}: a second function at 0x${f.vaddr.toString(16)}`);
    seen.add(f.vaddr);
    if (typeof f.oldHash !== 'string' || !HEX_SHA256.test(f.oldHash)) fail(`${where}: old-function hash is not 64 lowercase hex digits`);
    checkEntry(f, where, fail);
    if (!(f.code instanceof Uint8Array) || f.code.byteLength < 1 || f.code.byteLength > MAX_CODE_SIZE) {
      fail(`${where}: new code size ${String(f.code?.byteLength)} out of range 1..${MAX_CODE_SIZE}`);
    }
    checkAlign(f.align, where, fail);
    checkRelocations(f.relocations, f.code.byteLength, where, plan, fail);
  });
  plan.data.forEach((d, i) => {
    const where = `data ${i} (${typeof d.name === 'string' ? d.name.slice(0, 80) : '?'})`;
    checkStr(d.name, `${where} name`, fail);
    if (!(d.bytes instanceof Uint8Array) || d.bytes.byteLength > MAX_DATA_SIZE) fail(`${where}: size out of range 0..${MAX_DATA_SIZE}`);
    checkAlign(d.align, where, fail);
    checkRelocations(d.relocations, d.bytes.byteLength, where, plan, fail);
    if (d.writable !== undefined && d.writable !== true) fail(`${where}: writable is not true or absent`);
  });
  if (plan.unwind !== undefined) checkUnwind(plan, fail);
}

/**
 * The unwind image is parsed by the target's unwinder, inside the target: it must be a well-formed
 * `.eh_frame` (every record inside it, every FDE naming a CIE before it, zero-terminated).
 */
function checkUnwind(plan: PatchPlan, fail: Fail): void {
  const i = plan.unwind!.ehFrame;
  const d = Number.isInteger(i) && i >= 0 ? plan.data[i] : undefined;
  if (d === undefined) return fail(`unwind: .eh_frame data index ${i} is not a data item of the plan`);
  const b = d.bytes;
  let fdes = 0;
  try {
    const parsed = parseEhFrame(b, 0n);
    fdes = parsed.fdes.length;
    const last = [...parsed.cies, ...parsed.fdes].reduce((m, r) => Math.max(m, r.offset + r.size), 0);
    if (last + 4 !== b.byteLength || b.subarray(last).some((x) => x !== 0)) fail(`unwind: data ${i} does not end with a 4-byte zero terminator right after its last record`);
  } catch (e) {
    if (!(e instanceof ElfError)) throw e;
    fail(`unwind: data ${i} is not a valid .eh_frame image (${e.message})`);
  }
  if (fdes === 0) fail(`unwind: data ${i} holds no FDE`);
}

function validateMeta(meta: PackageMeta, fail: Fail): void {
  checkStr(meta.createdAt, 'createdAt', fail);
  checkStr(meta.toolVersion, 'toolVersion', fail);
  if (meta.description !== undefined) checkStr(meta.description, 'description', fail);
  if (meta.cves !== undefined) {
    if (!Array.isArray(meta.cves) || meta.cves.length > MAX_CVES) fail(`CVE list is not a list of at most ${MAX_CVES} ids`);
    for (const c of meta.cves) if (typeof c !== 'string' || !CVE_ID.test(c)) fail(`${JSON.stringify(c)} is not a CVE id (CVE-YYYY-NNNN)`);
  }
  if (meta.severity !== undefined && !(PATCH_SEVERITIES as readonly string[]).includes(meta.severity)) {
    fail(`severity ${JSON.stringify(meta.severity)} is not one of ${PATCH_SEVERITIES.join(', ')}`);
  }
}

/** Whether `meta` needs the extended encoding (CVE ids or a severity). */
function extendedMeta(meta: PackageMeta): boolean {
  return (meta.cves !== undefined && meta.cves.length > 0) || meta.severity !== undefined;
}

function validateCold(c: PackageColdPayload, fail: Fail): void {
  if (c.compression !== 'zlib' && c.compression !== 'brotli') fail(`cold payload: unknown compression ${String(c.compression)}`);
  if (!Number.isInteger(c.mode) || c.mode < 0 || c.mode > 0o7777) fail(`cold payload: mode ${c.mode} is not a permission mode`);
  if (!Number.isSafeInteger(c.size) || c.size < 0) fail(`cold payload: size ${c.size} out of range`);
  if (c.size > MAX_COLD_SIZE) {
    throw new PackageError('PACKAGE_TOO_LARGE', `cold payload declares ${c.size} bytes, more than the ${MAX_COLD_SIZE}-byte limit`);
  }
  if (typeof c.sha256 !== 'string' || !HEX_SHA256.test(c.sha256)) fail('cold payload: sha256 is not 64 lowercase hex digits');
  if (typeof c.buildId !== 'string' || !HEX_BUILD_ID.test(c.buildId)) fail('cold payload: build-id is not lowercase hex');
}

// ---------------------------------------------------------------------------------------------
// Encoding

const RELOC_TYPE_CODE: Record<RelocationType, number> = { pc32: 1, abs64: 2, abs32: 3, abs32s: 4 };

function writeOptStr(w: ByteWriter, s: string | undefined): void {
  w.flag(s !== undefined);
  if (s !== undefined) w.str(s);
}

function writeRelocs(w: ByteWriter, relocs: readonly Relocation[]): void {
  w.u32(relocs.length);
  for (const r of relocs) {
    w.u32(r.offset).u8(RELOC_TYPE_CODE[r.type]).i64(r.addend);
    const t = r.target;
    if (t.kind === 'module') w.u8(1).u64(t.vaddr);
    else if (t.kind === 'symbol') {
      w.u8(2).str(t.name);
      writeOptStr(w, t.version);
      writeOptStr(w, t.file);
    } else w.u8(3).u8(t.part === 'function' ? 1 : 2).u32(t.index).u32(t.offset);
  }
}

/** Encodes the CONT section body (no validation). */
function encodeContent(plan: PatchPlan, meta: PackageMeta): Uint8Array {
  const w = new ByteWriter();
  w.str(meta.createdAt).str(meta.toolVersion);
  if (extendedMeta(meta)) {
    w.u8(2);
    writeOptStr(w, meta.description);
    const cves = meta.cves ?? [];
    w.u8(cves.length);
    for (const c of cves) w.str(c);
    writeOptStr(w, meta.severity);
  } else writeOptStr(w, meta.description);
  w.str(plan.target.buildId).str(plan.target.name).u64(BigInt(plan.target.size));
  w.u32(plan.functions.length);
  for (const f of plan.functions) {
    w.str(f.name);
    writeOptStr(w, f.file);
    w.u64(f.vaddr).u32(f.size).raw(fromHex(f.oldHash));
    w.u8(f.entry.kind === 'padded' ? 1 : 2).u64(f.entry.siteVaddr).u64(f.entry.switchVaddr);
    w.u8(f.entry.expected.byteLength).raw(f.entry.expected);
    w.u32(f.code.byteLength).raw(f.code).u32(f.align);
    writeRelocs(w, f.relocations);
  }
  w.u32(plan.data.length);
  const vars: Array<{ index: number; zeroSize: number }> = [];
  plan.data.forEach((d, index) => {
    const zeroSize = d.writable === true && d.bytes.byteLength > 0 && d.bytes.every((b) => b === 0) ? d.bytes.byteLength : 0;
    if (d.writable === true) vars.push({ index, zeroSize });
    const bytes = zeroSize > 0 ? new Uint8Array(0) : d.bytes;
    w.str(d.name).u32(bytes.byteLength).raw(bytes).u32(d.align);
    writeRelocs(w, d.relocations);
  });
  if (vars.length > 0) {
    w.u8(VARIABLES_PART).u32(vars.length);
    for (const v of vars) w.u32(v.index).u32(v.zeroSize);
  }
  if (plan.unwind) w.u8(UNWIND_PART).u32(plan.unwind.ehFrame);
  return w.finish();
}

function encodeCold(c: PackageColdPayload): Uint8Array {
  const w = new ByteWriter();
  w.u8(c.compression === 'zlib' ? 1 : 2).u32(c.mode).u64(BigInt(c.size)).raw(fromHex(c.sha256)).str(c.buildId);
  w.u32(c.data.byteLength).raw(c.data);
  return w.finish();
}

function encodeSignature(s: PackageSignature): Uint8Array {
  const w = new ByteWriter();
  w.u8(1).raw(s.publicKey).str(s.keyId);
  writeOptStr(w, s.signer);
  w.raw(s.signature);
  return w.finish();
}

function section(w: ByteWriter, tag: string, body: Uint8Array): void {
  if (body.byteLength > 0xffffffff) throw new PackageError('PACKAGE_TOO_LARGE', `section ${tag} is larger than 4 GiB`);
  w.raw(new TextEncoder().encode(tag)).u32(body.byteLength).raw(body);
}

/** The patch id of a plan + metadata: first 16 hex digits of sha256 of the encoded content. */
export function computePackageId(plan: PatchPlan, meta: PackageMeta): string {
  return toHex(sha256(encodeContent(plan, meta))).slice(0, 16);
}

/**
 * Makes a package (unsigned) from a plan. `createdAt` defaults to now; the id is derived.
 * Validates the plan (PackageError PACKAGE_INVALID on a bad plan).
 */
export function createPackage(
  plan: PatchPlan,
  options: { description?: string; cves?: readonly string[]; severity?: PatchSeverity; createdAt?: Date | string; toolVersion?: string; cold?: PackageColdPayload } = {},
): PatchPackage {
  const created = options.createdAt ?? new Date();
  const meta: PackageMeta = {
    createdAt: typeof created === 'string' ? created : created.toISOString(),
    toolVersion: options.toolVersion ?? HOTPATCH_TOOL_VERSION,
  };
  if (options.description !== undefined) meta.description = options.description;
  if (options.cves !== undefined && options.cves.length > 0) meta.cves = [...options.cves];
  if (options.severity !== undefined) meta.severity = options.severity;
  const fail = failWith('PACKAGE_INVALID');
  validatePlan(plan);
  validateMeta(meta, fail);
  if (options.cold) validateCold(options.cold, fail);
  const pkg: PatchPackage = { formatVersion: PACKAGE_FORMAT_VERSION, id: computePackageId(plan, meta), plan, meta };
  if (options.cold) pkg.cold = options.cold;
  return pkg;
}

function signingMessageFrom(contentBody: Uint8Array, coldBody: Uint8Array | undefined, signer: string | undefined): Uint8Array {
  const w = new ByteWriter();
  w.raw(SIGNATURE_DOMAIN).u16(PACKAGE_FORMAT_VERSION).raw(sha256(contentBody));
  w.raw(coldBody ? sha256(coldBody) : new Uint8Array(32));
  writeOptStr(w, signer);
  return w.finish();
}

/**
 * The exact bytes an ed25519 signature of this package signs (content and cold payload hashes plus
 * the claimed signer name). Independent of any existing signature, so signing is repeatable.
 */
export function packageSigningMessage(pkg: PatchPackage, signer?: string): Uint8Array {
  const fail = failWith('PACKAGE_INVALID');
  validatePlan(pkg.plan);
  validateMeta(pkg.meta, fail);
  if (pkg.cold) validateCold(pkg.cold, fail);
  if (signer !== undefined) checkStr(signer, 'signer name', fail);
  return signingMessageFrom(encodeContent(pkg.plan, pkg.meta), pkg.cold ? encodeCold(pkg.cold) : undefined, signer);
}

/**
 * Encodes a package to bytes. The id is recomputed from the content (a stale `pkg.id` is ignored);
 * the signature, if present, is written as is (verify with the trust module).
 */
export function encodePackage(pkg: PatchPackage): Uint8Array {
  const fail = failWith('PACKAGE_INVALID');
  validatePlan(pkg.plan);
  validateMeta(pkg.meta, fail);
  if (pkg.cold) validateCold(pkg.cold, fail);
  if (pkg.signature) {
    const s = pkg.signature;
    if (s.algorithm !== 'ed25519' || s.publicKey.byteLength !== 32 || s.signature.byteLength !== 64) {
      fail('signature block is not a 32-byte ed25519 key with a 64-byte signature');
    }
    if (s.keyId !== keyIdOf(s.publicKey)) fail('signature key id does not match its public key');
    if (s.signer !== undefined) checkStr(s.signer, 'signer name', fail);
  }
  const w = new ByteWriter();
  w.raw(PACKAGE_MAGIC).u16(PACKAGE_FORMAT_VERSION).u16(0);
  section(w, 'CONT', encodeContent(pkg.plan, pkg.meta));
  if (pkg.cold) section(w, 'COLD', encodeCold(pkg.cold));
  if (pkg.signature) section(w, 'SIGN', encodeSignature(pkg.signature));
  const out = w.finish();
  if (out.byteLength > MAX_PACKAGE_SIZE) {
    throw new PackageError('PACKAGE_TOO_LARGE', `package would be ${out.byteLength} bytes, more than the ${MAX_PACKAGE_SIZE}-byte limit`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

function readOptStr(r: ByteReader, field: string): string | undefined {
  return r.flag(`${field} presence`) ? r.str(field) : undefined;
}

/** Smallest encoded relocation: offset 4 + type 1 + addend 8 + target kind 1 + module vaddr 8. */
const MIN_RELOC_SIZE = 4 + 1 + 8 + 1 + 8;
/** Smallest encoded function (names empty, 2 expected bytes, 1 code byte, no relocations). */
const MIN_FUNCTION_SIZE = 2 + 1 + 8 + 4 + 32 + 1 + 8 + 8 + 1 + 2 + 4 + 1 + 4 + 4;
const MIN_DATA_SIZE = 2 + 4 + 4 + 4;

function readRelocs(r: ByteReader, where: string): Relocation[] {
  const n = r.count(`${where} relocation`, MIN_RELOC_SIZE);
  const out: Relocation[] = [];
  for (let i = 0; i < n; i++) {
    const offset = r.u32('relocation offset');
    const typeCode = r.u8('relocation type');
    const type = RELOC_TYPES[typeCode - 1];
    if (!type) throw new PackageError('PACKAGE_CORRUPT', `package content: ${where} relocation ${i} has unknown type ${typeCode}`);
    const addend = r.i64('relocation addend');
    const kind = r.u8('relocation target kind');
    let target: RelocationTarget;
    if (kind === 1) target = { kind: 'module', vaddr: r.u64('relocation target vaddr') };
    else if (kind === 2) {
      const name = r.str('relocation symbol');
      const version = readOptStr(r, 'relocation symbol version');
      const file = readOptStr(r, 'relocation symbol file');
      target = { kind: 'symbol', name };
      if (version !== undefined) target.version = version;
      if (file !== undefined) target.file = file;
    } else if (kind === 3) {
      const part = r.u8('relocation local part');
      if (part !== 1 && part !== 2) throw new PackageError('PACKAGE_CORRUPT', `package content: ${where} relocation ${i} has unknown local part ${part}`);
      target = { kind: 'local', part: part === 1 ? 'function' : 'data', index: r.u32('local index'), offset: r.u32('local offset') };
    } else {
      throw new PackageError('PACKAGE_CORRUPT', `package content: ${where} relocation ${i} has unknown target kind ${kind}`);
    }
    out.push({ offset, type, target, addend });
  }
  return out;
}

function readBytes32(r: ByteReader, field: string, max: number): Uint8Array {
  const n = r.u32(`${field} length`);
  if (n > max) throw new PackageError('PACKAGE_TOO_LARGE', `package ${field} is ${n} bytes, more than the ${max}-byte limit`);
  return r.take(n, field);
}

/** The `vars` part of the content: marks data as variables and expands zero-filled ones. */
function readVariables(r: ByteReader, data: PatchData[]): void {
  const n = r.count('variable', 8);
  let last = -1;
  for (let i = 0; i < n; i++) {
    const index = r.u32('variable index');
    const zeroSize = r.u32('variable zero size');
    const d = data[index];
    if (d === undefined || index <= last) throw new PackageError('PACKAGE_CORRUPT', `package content: variable ${i} names data ${index}, which does not exist or is out of order`);
    last = index;
    if (zeroSize > 0) {
      if (d.bytes.byteLength !== 0 || zeroSize > MAX_DATA_SIZE) throw new PackageError('PACKAGE_CORRUPT', `package content: zero-filled variable ${d.name.slice(0, 80)} has bytes or is too large (${zeroSize})`);
      d.bytes = new Uint8Array(zeroSize);
    }
    d.writable = true;
  }
}

function decodeContent(body: Uint8Array): { plan: PatchPlan; meta: PackageMeta } {
  const r = new ByteReader(body, 'content section');
  const meta: PackageMeta = { createdAt: r.str('createdAt'), toolVersion: r.str('toolVersion') };
  const metaForm = r.u8('description presence');
  let description: string | undefined;
  if (metaForm === 2) {
    description = readOptStr(r, 'description');
    const n = r.u8('CVE count');
    const cves: string[] = [];
    for (let i = 0; i < n; i++) cves.push(r.str('CVE id'));
    if (cves.length > 0) meta.cves = cves;
    const severity = readOptStr(r, 'severity');
    if (severity !== undefined) meta.severity = severity as PatchSeverity;
    validateMeta(meta, failWith('PACKAGE_CORRUPT'));
  } else if (metaForm === 1) description = r.str('description');
  else if (metaForm !== 0) throw new PackageError('PACKAGE_CORRUPT', `package content: unknown metadata form ${metaForm}`);
  if (description !== undefined) meta.description = description;
  const buildId = r.str('target build-id');
  const name = r.str('target name');
  const size64 = r.u64('target size');
  if (size64 > BigInt(Number.MAX_SAFE_INTEGER)) throw new PackageError('PACKAGE_CORRUPT', `package content: target size ${size64} out of range`);
  const plan: PatchPlan = { target: { buildId, name, size: Number(size64) }, functions: [], data: [] };
  const nf = r.count('function', MIN_FUNCTION_SIZE);
  for (let i = 0; i < nf; i++) {
    const fname = r.str('function name');
    const file = readOptStr(r, 'function file');
    const vaddr = r.u64('function vaddr');
    const size = r.u32('function size');
    const oldHash = toHex(r.peekView(32, 'old-function hash'));
    const kindCode = r.u8('entry kind');
    if (kindCode !== 1 && kindCode !== 2) throw new PackageError('PACKAGE_CORRUPT', `package content: function ${i} has unknown entry kind ${kindCode}`);
    const siteVaddr = r.u64('entry site');
    const switchVaddr = r.u64('entry switch');
    const nExpected = r.u8('entry bytes length');
    const entry: EntryPlan = { kind: kindCode === 1 ? 'padded' : 'plain', siteVaddr, switchVaddr, expected: r.take(nExpected, 'entry bytes') };
    const code = readBytes32(r, 'function code', MAX_CODE_SIZE);
    const align = r.u32('function align');
    const relocations = readRelocs(r, `function ${i}`);
    const f: PatchFunction = { name: fname, vaddr, size, oldHash, entry, code, align, relocations };
    if (file !== undefined) f.file = file;
    plan.functions.push(f);
  }
  const nd = r.count('data', MIN_DATA_SIZE);
  for (let i = 0; i < nd; i++) {
    const dname = r.str('data name');
    const bytes = readBytes32(r, 'data bytes', MAX_DATA_SIZE);
    const align = r.u32('data align');
    const d: PatchData = { name: dname, bytes, align, relocations: readRelocs(r, `data ${i}`) };
    plan.data.push(d);
  }
  for (let last = 0; r.remaining > 0; ) {
    const part = r.u8('part after the data');
    if (part <= last) throw new PackageError('PACKAGE_CORRUPT', `package content: part ${part} after the data is repeated or out of order`);
    last = part;
    if (part === VARIABLES_PART) readVariables(r, plan.data);
    else if (part === UNWIND_PART) plan.unwind = { ehFrame: r.u32('unwind .eh_frame index') };
    else throw new PackageError('PACKAGE_CORRUPT', `package content: unknown part ${part} after the data`);
  }
  if (r.remaining !== 0) throw new PackageError('PACKAGE_CORRUPT', `package content: ${r.remaining} stray bytes after the data`);
  validatePlan(plan, 'PACKAGE_CORRUPT');
  return { plan, meta };
}

function decodeCold(body: Uint8Array): PackageColdPayload {
  const r = new ByteReader(body, 'cold payload section');
  const comp = r.u8('compression');
  if (comp !== 1 && comp !== 2) throw new PackageError('PACKAGE_CORRUPT', `package cold payload: unknown compression ${comp}`);
  const mode = r.u32('mode');
  const size64 = r.u64('size');
  if (size64 > BigInt(MAX_COLD_SIZE)) {
    throw new PackageError('PACKAGE_TOO_LARGE', `package cold payload declares ${size64} bytes, more than the ${MAX_COLD_SIZE}-byte limit`);
  }
  const sha = toHex(r.peekView(32, 'sha256'));
  const buildId = r.str('build-id');
  const data = readBytes32(r, 'compressed cold payload', MAX_PACKAGE_SIZE);
  if (r.remaining !== 0) throw new PackageError('PACKAGE_CORRUPT', `package cold payload: ${r.remaining} stray bytes`);
  const cold: PackageColdPayload = { compression: comp === 1 ? 'zlib' : 'brotli', mode, size: Number(size64), sha256: sha, buildId, data };
  validateCold(cold, failWith('PACKAGE_CORRUPT'));
  return cold;
}

function decodeSignature(body: Uint8Array): PackageSignature {
  const r = new ByteReader(body, 'signature section');
  const alg = r.u8('algorithm');
  if (alg !== 1) throw new PackageError('PACKAGE_UNSUPPORTED_VERSION', `package signature uses unknown algorithm ${alg}; upgrade hotpatch`);
  const publicKey = r.take(32, 'public key');
  const keyId = r.str('key id');
  const signer = readOptStr(r, 'signer');
  const signature = r.take(64, 'signature');
  if (r.remaining !== 0) throw new PackageError('PACKAGE_CORRUPT', `package signature: ${r.remaining} stray bytes`);
  if (keyId !== keyIdOf(publicKey)) throw new PackageError('PACKAGE_CORRUPT', 'package signature: key id does not match the public key');
  const s: PackageSignature = { algorithm: 'ed25519', publicKey, keyId, signature };
  if (signer !== undefined) s.signer = signer;
  return s;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}

/** A decoded package plus the raw section bodies the signature covers. */
interface DecodedSections {
  pkg: PatchPackage;
  content: Uint8Array;
  cold?: Uint8Array;
}

function decodeSections(bytes: Uint8Array): DecodedSections {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('decodePackage: bytes must be a Uint8Array');
  if (bytes.byteLength > MAX_PACKAGE_SIZE) {
    throw new PackageError('PACKAGE_TOO_LARGE', `package is ${bytes.byteLength} bytes, more than the ${MAX_PACKAGE_SIZE}-byte limit`);
  }
  const magicLen = Math.min(bytes.byteLength, PACKAGE_MAGIC.byteLength);
  if (!sameBytes(bytes.subarray(0, magicLen), PACKAGE_MAGIC.subarray(0, magicLen)) || bytes.byteLength === 0) {
    throw new PackageError('PACKAGE_BAD_MAGIC', 'not a hotpatch package (no HOTPATCH magic); check the file name');
  }
  const r = new ByteReader(bytes, 'file', 'PACKAGE_TRUNCATED');
  r.peekView(PACKAGE_MAGIC.byteLength, 'magic');
  const version = r.u16('format version');
  if (version !== PACKAGE_FORMAT_VERSION) {
    throw new PackageError(
      'PACKAGE_UNSUPPORTED_VERSION',
      version > PACKAGE_FORMAT_VERSION
        ? `package format version ${version} is newer than this hotpatch supports (${PACKAGE_FORMAT_VERSION}); upgrade hotpatch`
        : `package format version ${version} is not supported (this hotpatch reads version ${PACKAGE_FORMAT_VERSION})`,
    );
  }
  const flags = r.u16('header flags');
  if (flags !== 0) throw new PackageError('PACKAGE_UNSUPPORTED_VERSION', `package header flags 0x${flags.toString(16)} are unknown; upgrade hotpatch`);

  let content: Uint8Array | undefined;
  let coldBody: Uint8Array | undefined;
  let sigBody: Uint8Array | undefined;
  while (r.remaining > 0) {
    const tagBytes = r.peekView(4, 'section tag');
    const tag = String.fromCharCode(...tagBytes);
    if (!/^[A-Za-z]{4}$/.test(tag)) throw new PackageError('PACKAGE_CORRUPT', `package has a malformed section tag at offset ${r.offset - 4}`);
    const len = r.u32(`section ${tag} length`);
    const body = r.peekView(len, `section ${tag}`);
    switch (tag) {
      case 'CONT':
        if (content) throw new PackageError('PACKAGE_CORRUPT', 'package has two content sections');
        content = body;
        break;
      case 'COLD':
        if (!content || coldBody || sigBody) throw new PackageError('PACKAGE_CORRUPT', 'package cold payload section is out of order or repeated');
        coldBody = body;
        break;
      case 'SIGN':
        if (!content || sigBody) throw new PackageError('PACKAGE_CORRUPT', 'package signature section is out of order or repeated');
        sigBody = body;
        break;
      default:
        if (tag[0]! >= 'A' && tag[0]! <= 'Z') {
          throw new PackageError('PACKAGE_UNSUPPORTED_VERSION', `package has a critical section "${tag}" this hotpatch does not know; upgrade hotpatch`);
        }
      // Ancillary: skipped.
    }
  }
  if (!content) throw new PackageError('PACKAGE_TRUNCATED', 'package has no content section; the file is truncated');

  const { plan, meta } = decodeContent(content);
  if (!sameBytes(encodeContent(plan, meta), content)) {
    throw new PackageError('PACKAGE_CORRUPT', 'package content is not canonically encoded; the package is damaged');
  }
  const pkg: PatchPackage = { formatVersion: version, id: toHex(sha256(content)).slice(0, 16), plan, meta };
  if (coldBody) {
    pkg.cold = decodeCold(coldBody);
    if (!sameBytes(encodeCold(pkg.cold), coldBody)) throw new PackageError('PACKAGE_CORRUPT', 'package cold payload is not canonically encoded');
  }
  if (sigBody) pkg.signature = decodeSignature(sigBody);
  const out: DecodedSections = { pkg, content };
  if (coldBody) out.cold = coldBody;
  return out;
}

/**
 * Decodes and validates a package. Throws PackageError with code PACKAGE_BAD_MAGIC,
 * PACKAGE_TRUNCATED, PACKAGE_UNSUPPORTED_VERSION, PACKAGE_CORRUPT or PACKAGE_TOO_LARGE.
 * Does not check the signature (see `verifyPackageSignature`) nor decompress the cold payload
 * (see `extractColdFile`).
 */
export function decodePackage(bytes: Uint8Array): PatchPackage {
  return decodeSections(bytes).pkg;
}

/**
 * The raw content section (`CONT` body) of an encoded package: the bytes the patch id and the
 * signature are computed over. The engine stores them in the target's record so that a verifier
 * can re-check a patch against what was signed. Throws like {@link decodePackage}.
 */
export function packageContentOf(bytes: Uint8Array): Uint8Array {
  return decodeSections(bytes).content.slice();
}

/**
 * Decodes a content section on its own (as stored in a patch record). Throws PackageError
 * (PACKAGE_CORRUPT, PACKAGE_TRUNCATED) exactly as {@link decodePackage} would for that content.
 */
export function decodePackageContent(content: Uint8Array): { id: string; plan: PatchPlan; meta: PackageMeta } {
  const { plan, meta } = decodeContent(content);
  if (!sameBytes(encodeContent(plan, meta), content)) {
    throw new PackageError('PACKAGE_CORRUPT', 'package content is not canonically encoded; the package is damaged');
  }
  return { id: toHex(sha256(content)).slice(0, 16), plan, meta };
}
