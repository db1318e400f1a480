/**
 * A reader of `.eh_frame` (CIEs and FDEs) and of the LSDAs in `.gcc_except_table`, as far as the
 * patch builder needs them to carry the unwind information of new code: record boundaries, and
 * every pointer field with its encoding and the address it designates.
 *
 * Formats: Linux Standard Base Core, "Exception Frames" (.eh_frame, DW_EH_PE_* pointer encodings)
 * and the Itanium C++ ABI LSDA as gcc writes it (libgcc unwind-dw2-fde.c, unwind-pe.h,
 * libstdc++ eh_personality.cc parse_lsda_header). Pure functions over bytes: every read is
 * bounded, malformed input gives ElfError EH_FRAME_MALFORMED, encodings outside what x86-64
 * toolchains emit give EH_FRAME_UNSUPPORTED.
 */
import { ElfError } from '../errors.js';
import type { ErrorCode } from '../errors.js';

export const DW_EH_PE_absptr = 0x00;
export const DW_EH_PE_uleb128 = 0x01;
export const DW_EH_PE_udata2 = 0x02;
export const DW_EH_PE_udata4 = 0x03;
export const DW_EH_PE_udata8 = 0x04;
export const DW_EH_PE_sleb128 = 0x09;
export const DW_EH_PE_sdata2 = 0x0a;
export const DW_EH_PE_sdata4 = 0x0b;
export const DW_EH_PE_sdata8 = 0x0c;
export const DW_EH_PE_pcrel = 0x10;
export const DW_EH_PE_indirect = 0x80;
export const DW_EH_PE_omit = 0xff;

export const EhFrameErrorCode = {
  MALFORMED: 'EH_FRAME_MALFORMED',
  UNSUPPORTED: 'EH_FRAME_UNSUPPORTED',
} as const;

/** A pointer field: where it is, how it is encoded, and what it designates. */
export interface EncodedPointer {
  /** Offset of the field in the section bytes. */
  offset: number;
  /** Its DW_EH_PE_* encoding (DW_EH_PE_indirect kept: `value` is then the address of a slot). */
  encoding: number;
  /** Bytes the field occupies. */
  size: number;
  /** The vaddr it designates (pc-relative values resolved); 0n for a null pointer. */
  value: bigint;
}

export interface CieRecord {
  /** Offset of the record (its length field) in the section; `size` bytes including it. */
  offset: number;
  size: number;
  augmentation: string;
  /** Encoding of the FDEs' pc_begin (augmentation 'R'), of their LSDA pointers ('L'). */
  fdeEncoding: number;
  lsdaEncoding: number;
  /** The personality routine pointer (augmentation 'P'). */
  personality?: EncodedPointer;
}

export interface FdeRecord {
  offset: number;
  size: number;
  cie: CieRecord;
  pcBegin: EncodedPointer;
  pcRange: bigint;
  /** The LSDA pointer (augmentation 'L'), absent or null when the function has no handlers. */
  lsda?: EncodedPointer;
}

function fail(code: ErrorCode, message: string): never {
  throw new ElfError(code, `.eh_frame: ${message}`);
}

/** A bounded little-endian cursor over section bytes. */
class Cursor {
  readonly #dv: DataView;
  constructor(
    readonly bytes: Uint8Array,
    public pos: number,
    readonly end: number,
  ) {
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  #need(n: number): void {
    if (n < 0 || this.pos + n > this.end) fail(EhFrameErrorCode.MALFORMED, `a field at offset ${this.pos} runs past the end of its record`);
  }
  u8(): number {
    this.#need(1);
    return this.bytes[this.pos++]!;
  }
  u32(): number {
    this.#need(4);
    const v = this.#dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  fixed(size: number, signed: boolean): bigint {
    this.#need(size);
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.bytes[this.pos + i]!);
    this.pos += size;
    return signed ? BigInt.asIntN(size * 8, v) : v;
  }
  leb(signed: boolean): bigint {
    let v = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      const b = this.u8();
      v |= BigInt(b & 0x7f) << shift;
      shift += 7n;
      if ((b & 0x80) === 0) return signed && (b & 0x40) !== 0 ? v - (1n << shift) : v;
    }
    return fail(EhFrameErrorCode.MALFORMED, `a LEB128 number at offset ${this.pos - 10} is longer than 10 bytes`);
  }
  uleb(): number {
    const v = this.leb(false);
    if (v > BigInt(this.end)) fail(EhFrameErrorCode.MALFORMED, `length ${v} at offset ${this.pos} exceeds the section`);
    return Number(v);
  }
  cstr(): string {
    const start = this.pos;
    while (this.u8() !== 0);
    return String.fromCharCode(...this.bytes.subarray(start, this.pos - 1));
  }
}

/** Size of a fixed-size encoding's field; undefined for LEB128 or unknown formats. */
export function encodedSize(encoding: number): number | undefined {
  switch (encoding & 0x0f) {
    case DW_EH_PE_absptr:
    case DW_EH_PE_udata8:
    case DW_EH_PE_sdata8:
      return 8;
    case DW_EH_PE_udata4:
    case DW_EH_PE_sdata4:
      return 4;
    case DW_EH_PE_udata2:
    case DW_EH_PE_sdata2:
      return 2;
    default:
      return undefined;
  }
}

/**
 * Reads a pointer in `encoding` at the cursor. Only absolute and pc-relative applications exist
 * on x86-64 (textrel/datarel/funcrel/aligned are for other targets): anything else is refused.
 */
function readPointer(c: Cursor, encoding: number, vaddr: bigint): EncodedPointer {
  const offset = c.pos;
  const app = encoding & 0x70;
  if (app !== 0 && app !== DW_EH_PE_pcrel) fail(EhFrameErrorCode.UNSUPPORTED, `pointer encoding 0x${encoding.toString(16)} at offset ${offset}`);
  const format = encoding & 0x0f;
  let raw: bigint;
  if (format === DW_EH_PE_uleb128 || format === DW_EH_PE_sleb128) raw = c.leb(format === DW_EH_PE_sleb128);
  else {
    const size = encodedSize(encoding);
    if (size === undefined) fail(EhFrameErrorCode.UNSUPPORTED, `pointer format 0x${format.toString(16)} at offset ${offset}`);
    raw = c.fixed(size, (format & 0x08) !== 0);
  }
  // A null pointer stays null whatever the application (unwind-pe.h read_encoded_value_with_base).
  const value = raw === 0n ? 0n : BigInt.asUintN(64, app === DW_EH_PE_pcrel ? vaddr + BigInt(offset) + raw : raw);
  return { offset, encoding, size: c.pos - offset, value };
}

/** Parses every record of an `.eh_frame` section whose bytes are loaded at `vaddr`. */
export function parseEhFrame(bytes: Uint8Array, vaddr: bigint): { cies: CieRecord[]; fdes: FdeRecord[] } {
  const cies = new Map<number, CieRecord>();
  const fdes: FdeRecord[] = [];
  let pos = 0;
  while (pos + 4 <= bytes.length) {
    const head = new Cursor(bytes, pos, bytes.length);
    const length = head.u32();
    if (length === 0) break; // terminator
    if (length === 0xffffffff) fail(EhFrameErrorCode.UNSUPPORTED, `64-bit record length at offset ${pos}`);
    const end = head.pos + length;
    if (end > bytes.length || length < 4) fail(EhFrameErrorCode.MALFORMED, `record at offset ${pos} of ${length} bytes runs past the section (${bytes.length} bytes)`);
    const c = new Cursor(bytes, head.pos, end);
    const idPos = c.pos;
    const id = c.u32();
    if (id === 0) cies.set(pos, parseCie(c, pos, end - pos, vaddr));
    else {
      const cie = cies.get(idPos - id);
      if (cie === undefined) fail(EhFrameErrorCode.MALFORMED, `FDE at offset ${pos} names no CIE before it (CIE pointer ${id})`);
      const pcBegin = readPointer(c, cie.fdeEncoding, vaddr);
      const pcRange = c.fixed(encodedSize(cie.fdeEncoding) ?? fail(EhFrameErrorCode.UNSUPPORTED, `FDE pc range format at offset ${c.pos}`), false);
      const fde: FdeRecord = { offset: pos, size: end - pos, cie, pcBegin, pcRange };
      if (cie.augmentation.startsWith('z')) {
        const augLen = c.uleb();
        const augEnd = c.pos + augLen;
        if (cie.augmentation.includes('L') && cie.lsdaEncoding !== DW_EH_PE_omit) {
          const lsda = readPointer(c, cie.lsdaEncoding, vaddr);
          if (lsda.value !== 0n) fde.lsda = lsda;
        }
        if (c.pos > augEnd) fail(EhFrameErrorCode.MALFORMED, `FDE at offset ${pos}: augmentation data overruns its length`);
      }
      fdes.push(fde);
    }
    pos = end;
  }
  return { cies: [...cies.values()], fdes };
}

function parseCie(c: Cursor, offset: number, size: number, vaddr: bigint): CieRecord {
  const version = c.u8();
  if (version !== 1 && version !== 3) fail(EhFrameErrorCode.UNSUPPORTED, `CIE at offset ${offset} has version ${version}`);
  const augmentation = c.cstr();
  if (augmentation.includes('eh')) fail(EhFrameErrorCode.UNSUPPORTED, `CIE at offset ${offset} has the obsolete "eh" augmentation`);
  c.leb(false); // code alignment factor
  c.leb(true); // data alignment factor
  if (version === 1) c.u8();
  else c.leb(false); // return address register
  const cie: CieRecord = { offset, size, augmentation, fdeEncoding: DW_EH_PE_absptr, lsdaEncoding: DW_EH_PE_omit };
  if (!augmentation.startsWith('z')) {
    if (augmentation !== '') fail(EhFrameErrorCode.UNSUPPORTED, `CIE at offset ${offset} has augmentation "${augmentation}" without 'z'`);
    return cie;
  }
  const augLen = c.uleb();
  const augEnd = c.pos + augLen;
  for (const ch of augmentation.slice(1)) {
    if (ch === 'R') cie.fdeEncoding = c.u8();
    else if (ch === 'L') cie.lsdaEncoding = c.u8();
    else if (ch === 'P') cie.personality = readPointer(c, c.u8(), vaddr);
    else if (ch !== 'S' && ch !== 'B') break; // unknown: the 'z' length covers its data
  }
  if (c.pos > augEnd) fail(EhFrameErrorCode.MALFORMED, `CIE at offset ${offset}: augmentation data overruns its length`);
  return cie;
}

/** What must be relocated in one LSDA, and how far it extends. */
export interface LsdaInfo {
  /** Offset of the LSDA in the section bytes and its extent (header to last table byte). */
  offset: number;
  size: number;
  /** LPStart when it is not omitted (landing pads then not relative to the function start). */
  lpStart?: EncodedPointer;
  /** The type-table entries the action records use (`catch` types), null entries (catch-all) included. */
  types: EncodedPointer[];
}

/**
 * Parses the LSDA at `offset` of `.gcc_except_table` bytes loaded at `vaddr`. Call-site entries
 * are offsets from the function start (position independent); the pointers are LPStart and the
 * type table, whose used length follows from the action records (positive filters index it,
 * negative ones point at exception specifications listing indexes).
 */
export function parseLsda(bytes: Uint8Array, vaddr: bigint, offset: number): LsdaInfo {
  const c = new Cursor(bytes, offset, bytes.length);
  const info: LsdaInfo = { offset, size: 0, types: [] };
  const lpEnc = c.u8();
  if (lpEnc !== DW_EH_PE_omit) info.lpStart = readPointer(c, lpEnc, vaddr);
  const ttEnc = c.u8();
  let ttBase: number | undefined;
  if (ttEnc !== DW_EH_PE_omit) {
    const ttOff = c.uleb();
    ttBase = c.pos + ttOff;
  }
  const csEnc = c.u8();
  const csLen = c.uleb();
  const csEnd = c.pos + csLen;
  if (csEnd > bytes.length) fail(EhFrameErrorCode.MALFORMED, `LSDA at offset ${offset}: call-site table runs past the section`);
  const actions = new Set<number>();
  while (c.pos < csEnd) {
    for (let i = 0; i < 3; i++) readPointer(c, csEnc & 0x0f, 0n); // start, length, landing pad: offsets
    const a = c.uleb();
    if (a !== 0) actions.add(csEnd + a - 1);
  }
  let end = csEnd;
  let maxType = 0;
  const specs = new Set<number>();
  for (const first of actions) {
    for (let at = first, n = 0; n < 4096; n++) {
      const a = new Cursor(bytes, at, bytes.length);
      const filter = a.leb(true);
      const dispPos = a.pos;
      const disp = a.leb(true);
      end = Math.max(end, a.pos);
      if (filter > 0n) maxType = Math.max(maxType, Number(filter > 0xffffn ? 0xffffn : filter));
      else if (filter < 0n) specs.add(Number(-filter - 1n));
      if (disp === 0n) break;
      at = dispPos + Number(disp);
      if (at < csEnd || at >= bytes.length) fail(EhFrameErrorCode.MALFORMED, `LSDA at offset ${offset}: action chain leaves the action table`);
    }
  }
  if (ttBase === undefined) {
    if (maxType > 0 || specs.size > 0) fail(EhFrameErrorCode.MALFORMED, `LSDA at offset ${offset}: catch clauses without a type table`);
    info.size = end - offset;
    return info;
  }
  for (const s of specs) {
    const sc = new Cursor(bytes, ttBase + s, bytes.length);
    for (let n = 0; n < 4096; n++) {
      const idx = sc.uleb();
      if (idx === 0) break;
      maxType = Math.max(maxType, Math.min(idx, 0xffff));
    }
    end = Math.max(end, sc.pos);
  }
  const size = encodedSize(ttEnc);
  if (size === undefined) fail(EhFrameErrorCode.UNSUPPORTED, `LSDA at offset ${offset}: type table format 0x${ttEnc.toString(16)}`);
  if (ttBase - maxType * size < csEnd || ttBase > bytes.length) fail(EhFrameErrorCode.MALFORMED, `LSDA at offset ${offset}: type table overlaps its call sites or runs past the section`);
  for (let i = 1; i <= maxType; i++) info.types.push(readPointer(new Cursor(bytes, ttBase - i * size, ttBase), ttEnc, vaddr));
  info.size = Math.max(end, ttBase) - offset;
  return info;
}
