/**
 * A small DWARF reader (versions 2–5, as gcc emits with -g): struct/union/class layouts and, per
 * function, the struct types it uses through its return type, parameters and local variables.
 * The patch builder uses it to refuse a patch when a struct used by a changed function changed.
 *
 * Only .debug_info, .debug_abbrev, .debug_str, .debug_line_str and .debug_str_offsets are read.
 * Attributes that are not needed are skipped by their form; an unknown form cannot be skipped
 * (its size is unknown) and fails with DWARF_UNSUPPORTED. Hostile input gives ElfError DWARF_*,
 * with every loop bounded by the bytes available.
 */
import { inflateSync } from 'node:zlib';
import { ElfError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import * as C from './constants.js';
import type { ElfFile } from './elf-file.js';
import type { ElfSection } from './types.js';

/** Stable codes of DWARF errors (thrown as ElfError). */
export const DwarfErrorCode = {
  TRUNCATED: 'DWARF_TRUNCATED',
  BAD_STRUCTURE: 'DWARF_BAD_STRUCTURE',
  OUT_OF_RANGE: 'DWARF_OUT_OF_RANGE',
  UNSUPPORTED: 'DWARF_UNSUPPORTED',
} as const;

// DWARF 5 section 7.5.4 / 7.5.6 / 7.5.5 numbers (only those this reader uses).
export const DW_TAG_array_type = 0x01;
export const DW_TAG_class_type = 0x02;
export const DW_TAG_enumeration_type = 0x04;
export const DW_TAG_formal_parameter = 0x05;
export const DW_TAG_lexical_block = 0x0b;
export const DW_TAG_member = 0x0d;
export const DW_TAG_pointer_type = 0x0f;
export const DW_TAG_reference_type = 0x10;
export const DW_TAG_compile_unit = 0x11;
export const DW_TAG_structure_type = 0x13;
export const DW_TAG_subroutine_type = 0x15;
export const DW_TAG_typedef = 0x16;
export const DW_TAG_union_type = 0x17;
export const DW_TAG_inlined_subroutine = 0x1d;
export const DW_TAG_ptr_to_member_type = 0x1f;
export const DW_TAG_subrange_type = 0x21;
export const DW_TAG_base_type = 0x24;
export const DW_TAG_const_type = 0x26;
export const DW_TAG_subprogram = 0x2e;
export const DW_TAG_variable = 0x34;
export const DW_TAG_volatile_type = 0x35;
export const DW_TAG_restrict_type = 0x37;
export const DW_TAG_namespace = 0x39;
export const DW_TAG_unspecified_type = 0x3b;
export const DW_TAG_partial_unit = 0x3c;
export const DW_TAG_rvalue_reference_type = 0x42;
export const DW_TAG_atomic_type = 0x47;

export const DW_AT_name = 0x03;
export const DW_AT_byte_size = 0x0b;
export const DW_AT_bit_offset = 0x0c;
export const DW_AT_bit_size = 0x0d;
export const DW_AT_upper_bound = 0x2f;
export const DW_AT_abstract_origin = 0x31;
export const DW_AT_count = 0x37;
export const DW_AT_data_member_location = 0x38;
export const DW_AT_declaration = 0x3c;
export const DW_AT_external = 0x3f;
export const DW_AT_specification = 0x47;
export const DW_AT_type = 0x49;
export const DW_AT_containing_type = 0x1d;
export const DW_AT_data_bit_offset = 0x6b;
export const DW_AT_str_offsets_base = 0x72;
export const DW_AT_producer = 0x25;
export const DW_AT_linkage_name = 0x6e;
/** Pre-DWARF 4 spelling of DW_AT_linkage_name (gcc still emits it with -gstrict-dwarf off, -gdwarf-2/3). */
export const DW_AT_MIPS_linkage_name = 0x2007;
export const DW_AT_comp_dir = 0x1b;

export const DW_FORM_addr = 0x01;
export const DW_FORM_block2 = 0x03;
export const DW_FORM_block4 = 0x04;
export const DW_FORM_data2 = 0x05;
export const DW_FORM_data4 = 0x06;
export const DW_FORM_data8 = 0x07;
export const DW_FORM_string = 0x08;
export const DW_FORM_block = 0x09;
export const DW_FORM_block1 = 0x0a;
export const DW_FORM_data1 = 0x0b;
export const DW_FORM_flag = 0x0c;
export const DW_FORM_sdata = 0x0d;
export const DW_FORM_strp = 0x0e;
export const DW_FORM_udata = 0x0f;
export const DW_FORM_ref_addr = 0x10;
export const DW_FORM_ref1 = 0x11;
export const DW_FORM_ref2 = 0x12;
export const DW_FORM_ref4 = 0x13;
export const DW_FORM_ref8 = 0x14;
export const DW_FORM_ref_udata = 0x15;
export const DW_FORM_indirect = 0x16;
export const DW_FORM_sec_offset = 0x17;
export const DW_FORM_exprloc = 0x18;
export const DW_FORM_flag_present = 0x19;
export const DW_FORM_strx = 0x1a;
export const DW_FORM_addrx = 0x1b;
export const DW_FORM_ref_sup4 = 0x1c;
export const DW_FORM_strp_sup = 0x1d;
export const DW_FORM_data16 = 0x1e;
export const DW_FORM_line_strp = 0x1f;
export const DW_FORM_ref_sig8 = 0x20;
export const DW_FORM_implicit_const = 0x21;
export const DW_FORM_loclistx = 0x22;
export const DW_FORM_rnglistx = 0x23;
export const DW_FORM_ref_sup8 = 0x24;
export const DW_FORM_strx1 = 0x25;
export const DW_FORM_strx2 = 0x26;
export const DW_FORM_strx3 = 0x27;
export const DW_FORM_strx4 = 0x28;
export const DW_FORM_addrx1 = 0x29;
export const DW_FORM_addrx2 = 0x2a;
export const DW_FORM_addrx3 = 0x2b;
export const DW_FORM_addrx4 = 0x2c;
export const DW_FORM_GNU_addr_index = 0x1f01;
export const DW_FORM_GNU_str_index = 0x1f02;
export const DW_FORM_GNU_ref_alt = 0x1f20;
export const DW_FORM_GNU_strp_alt = 0x1f21;

const DW_OP_plus_uconst = 0x23;
const DW_UT_compile = 0x01;
const DW_UT_type = 0x02;
const DW_UT_partial = 0x03;
const DW_UT_skeleton = 0x04;
const DW_UT_split_compile = 0x05;
const DW_UT_split_type = 0x06;
const ELFCOMPRESS_ZLIB = 1;

/** One data member of a struct/union/class. */
export interface DwarfMember {
  /**
   * Member name. Members of anonymous struct/union members are flattened: a member `x` of an
   * anonymous union is listed as `x`; a member `a` of a named member `s` of anonymous struct type
   * as `s.a`.
   */
  name: string;
  /** Byte offset from the start of the outermost struct; null for bit-fields and when DWARF does not say. */
  offset: number | null;
  /** C-like spelling of the member type, e.g. `struct inner *`, `int[3]`, `const char *`. */
  type: string;
  /** For bit-fields: width in bits and offset in bits from the start of the struct. */
  bitSize?: number;
  bitOffset?: number;
}

/** A struct/union/class definition (declarations are not listed). */
export interface DwarfStruct {
  kind: 'struct' | 'union' | 'class';
  /** Tag name (qualified with C++ namespaces/classes), or the typedef name for an anonymous one. */
  name: string;
  /** true when the type has no tag and is named by a typedef. */
  anonymous: boolean;
  /**
   * The key functions refer to: `struct foo`, `union u`, `class ns::C`, or `typedef foo_t` for an
   * anonymous struct named by a typedef.
   */
  key: string;
  byteSize: number | null;
  members: DwarfMember[];
  /**
   * Keys of the struct types its members reach (by value, pointer, typedef or array), sorted:
   * the edges for a transitive closure (see `reachableStructs`).
   */
  memberStructs: string[];
  /** Compile units (DW_AT_name) in which this exact layout appears (empty when only in type units). */
  units: string[];
}

/** Struct types a function uses (directly, through pointers/typedefs/qualifiers/arrays). */
export interface DwarfFunction {
  /** Name (qualified for C++ methods via DW_AT_specification parents). */
  name: string;
  /** The symbol name (DW_AT_linkage_name: mangled for C++), when it differs from `name`. */
  linkageName?: string;
  /** DW_AT_name of the compile unit, as stored (often the path given to gcc). */
  unit: string;
  /** Base name of `unit`: what the ELF STT_FILE symbol holds for the unit's static functions. */
  file: string;
  /** DW_AT_external: visible outside its unit. */
  external: boolean;
  /** Keys (see `DwarfStruct.key`) of the struct/union/class types used, sorted. */
  structs: string[];
}

/** A compile unit header summary. */
export interface DwarfUnit {
  offset: number;
  version: number;
  name: string;
  producer?: string;
}

/** Result of `readDwarf`. */
export interface DwarfInfo {
  units: DwarfUnit[];
  /** Distinct struct layouts (a layout repeated in many units appears once, with all units). */
  structs: DwarfStruct[];
  /** One entry per (unit file, function name); abstract and concrete DIEs are merged. */
  functions: DwarfFunction[];
  /** Every distinct layout with this key (more than one when units disagree). */
  findStructs(key: string): DwarfStruct[];
  /** The function `name` (source or linkage name); `file` (unit base name) picks a static function of one unit. */
  findFunction(name: string, file?: string): DwarfFunction | undefined;
  /**
   * `keys` plus every struct reachable from them through members (by value or pointer), over all
   * layouts with those keys. For callers that want to be conservative about what a function touches.
   */
  reachableStructs(keys: Iterable<string>): string[];
}

/** Options of `readDwarf`. */
export interface DwarfReadOptions {
  /**
   * Stop with DWARF_UNSUPPORTED after this many DIEs (default 10 million, roughly 1–2 GB of memory;
   * each DIE takes at least one byte, so hostile input cannot exceed what its size allows either).
   */
  maxDies?: number;
}

function fail(code: ErrorCode, message: string): never {
  throw new ElfError(code, `DWARF: ${message}`);
}

/** Bounds-checked cursor over one section's bytes. */
class Cursor {
  pos: number;
  readonly end: number;
  readonly #dv: DataView;
  readonly u8: Uint8Array;
  constructor(u8: Uint8Array, pos: number, end: number, readonly what: string) {
    this.u8 = u8;
    this.#dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    this.pos = pos;
    this.end = end;
  }
  need(n: number): void {
    if (!(n >= 0 && this.pos + n <= this.end)) fail(DwarfErrorCode.TRUNCATED, `${this.what} ends inside an entry (at offset ${this.pos})`);
  }
  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }
  u8v(): number {
    this.need(1);
    return this.u8[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.#dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u24(): number {
    this.need(3);
    const v = this.u8[this.pos]! | (this.u8[this.pos + 1]! << 8) | (this.u8[this.pos + 2]! << 16);
    this.pos += 3;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.#dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** A u64 as a number; values above 2^53 (never a valid offset or size here) become Infinity. */
  u64n(): number {
    this.need(8);
    const v = this.#dv.getBigUint64(this.pos, true);
    this.pos += 8;
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
  }
  offset(size: 4 | 8): number {
    return size === 4 ? this.u32() : this.u64n();
  }
  /** ULEB128; values above 2^53 become Infinity (callers range-check). */
  uleb(): number {
    let result = 0;
    let mul = 1;
    for (;;) {
      const b = this.u8v();
      result += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) break;
      mul *= 128;
    }
    return Number.isFinite(result) && result <= Number.MAX_SAFE_INTEGER ? result : Infinity;
  }
  sleb(): number {
    let result = 0;
    let mul = 1;
    let b: number;
    do {
      b = this.u8v();
      result += (b & 0x7f) * mul;
      mul *= 128;
    } while (b & 0x80);
    if (b & 0x40) result -= mul;
    return Number.isSafeInteger(result) ? result : NaN;
  }
  cstring(): string {
    const nul = this.u8.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) fail(DwarfErrorCode.TRUNCATED, `${this.what}: unterminated string`);
    const s = decode(this.u8.subarray(this.pos, nul));
    this.pos = nul + 1;
    return s;
  }
}

const utf8 = new TextDecoder();
function decode(b: Uint8Array): string {
  return utf8.decode(b);
}

/** Longest string accepted (bounds the scan for hostile sections without NULs). */
const MAX_DWARF_STRING = 1 << 16;
const stringCaches = new WeakMap<Uint8Array, { map: Map<number, string>; budget: number }>();

function stringAt(sec: Uint8Array | undefined, off: number, what: string): string {
  if (!sec) fail(DwarfErrorCode.BAD_STRUCTURE, `a string refers to ${what}, which the file does not have`);
  let cache = stringCaches.get(sec);
  // Budget of decoded characters: distinct offsets into one long string cannot blow up memory.
  if (!cache) stringCaches.set(sec, (cache = { map: new Map(), budget: 8 * sec.length + (1 << 20) }));
  const hit = cache.map.get(off);
  if (hit !== undefined) return hit;
  if (!(off >= 0 && off < sec.length)) fail(DwarfErrorCode.OUT_OF_RANGE, `string offset ${off} is outside ${what} (${sec.length} bytes)`);
  const nul = sec.indexOf(0, off);
  if (nul < 0 || nul - off > MAX_DWARF_STRING) fail(DwarfErrorCode.OUT_OF_RANGE, `string at ${off} in ${what} is not NUL-terminated`);
  cache.budget -= nul - off + 1;
  if (cache.budget < 0) fail(DwarfErrorCode.BAD_STRUCTURE, `strings of ${what} decode to far more text than the section holds`);
  const str = decode(sec.subarray(off, nul));
  cache.map.set(off, str);
  return str;
}

interface AbbrevAttr {
  at: number;
  form: number;
  implicit: number;
}
interface Abbrev {
  tag: number;
  children: boolean;
  attrs: AbbrevAttr[];
}

function readAbbrevTable(sec: Uint8Array, offset: number): Map<number, Abbrev> {
  if (!(offset >= 0 && offset < sec.length)) fail(DwarfErrorCode.OUT_OF_RANGE, `abbreviation table offset ${offset} is outside .debug_abbrev`);
  const c = new Cursor(sec, offset, sec.length, '.debug_abbrev');
  const m = new Map<number, Abbrev>();
  for (;;) {
    const code = c.uleb();
    if (code === 0) break;
    const tag = c.uleb();
    const children = c.u8v() !== 0;
    const attrs: AbbrevAttr[] = [];
    for (;;) {
      const at = c.uleb();
      const form = c.uleb();
      if (at === 0 && form === 0) break;
      const implicit = form === DW_FORM_implicit_const ? c.sleb() : 0;
      attrs.push({ at, form, implicit });
    }
    if (m.has(code)) fail(DwarfErrorCode.BAD_STRUCTURE, `abbreviation code ${code} defined twice at .debug_abbrev offset ${offset}`);
    m.set(code, { tag, children, attrs });
  }
  return m;
}

/** A DIE reduced to what the layout and usage questions need. Offsets are absolute in .debug_info. */
interface Die {
  off: number;
  tag: number;
  parent: Die | undefined;
  children: Die[] | undefined;
  name?: string;
  linkageName?: string;
  type?: number;
  containingType?: number;
  byteSize?: number;
  memberLoc?: number;
  bitSize?: number;
  dataBitOffset?: number;
  /** DWARF 2–4 DW_AT_bit_offset: bits from the most significant end of the storage unit. */
  oldBitOffset?: number;
  upperBound?: number;
  count?: number;
  declaration?: boolean;
  external?: boolean;
  spec?: number;
  origin?: number;
  /** DW_AT_signature: this declaration stands for the type unit's type (resolved to an offset). */
  alias?: number;
  unit: UnitCtx;
}

interface UnitCtx {
  info: DwarfUnit;
  /** A type unit (DW_UT_type or .debug_types): holds types only, is not a compile unit. */
  typeUnit: boolean;
  file: string;
  strOffsetsBase: number;
  offsetSize: 4 | 8;
}

/** Raw attribute value as read: a number, a string, or a deferred string index (strx before the base is known). */
type RawValue = number | string | { strx: number } | { sig: bigint } | undefined;

interface Sections {
  info: Uint8Array;
  /** DWARF 4 type units (-fdebug-types-section). */
  types?: Uint8Array;
  abbrev: Uint8Array;
  str?: Uint8Array;
  lineStr?: Uint8Array;
  strOffsets?: Uint8Array;
}

/** Section bytes, decompressed when SHF_COMPRESSED (zlib); ET_REL relocations applied. */
function debugSection(elf: ElfFile, name: string): Uint8Array | undefined {
  const s = elf.findSection(name);
  if (!s || s.type === C.SHT_NOBITS) return undefined;
  let data: Uint8Array;
  try {
    data = elf.sectionData(s);
  } catch (e) {
    if (e instanceof ElfError) fail(DwarfErrorCode.OUT_OF_RANGE, `section ${name} lies outside the file`);
    throw e;
  }
  if ((s.flags & C.SHF_COMPRESSED) !== 0) data = decompress(data, name);
  if (elf.header.type === C.ET_REL) data = applyRelocations(elf, s, data);
  return data;
}

function decompress(data: Uint8Array, name: string): Uint8Array {
  if (data.length < 24) fail(DwarfErrorCode.TRUNCATED, `compressed section ${name} has no Elf64_Chdr`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const type = dv.getUint32(0, true);
  const size = dv.getBigUint64(8, true);
  if (type !== ELFCOMPRESS_ZLIB) fail(DwarfErrorCode.UNSUPPORTED, `section ${name} is compressed with type ${type}; only zlib is supported (rebuild with -gz=zlib or without -gz)`);
  // Bound the output by the size the header declares, itself bounded (zlib cannot expand > 1032:1).
  if (size > BigInt(data.length) * 1032n || size > 1n << 31n) fail(DwarfErrorCode.BAD_STRUCTURE, `section ${name} declares an implausible uncompressed size ${size}`);
  try {
    const out = inflateSync(data.subarray(24), { maxOutputLength: Math.max(1, Number(size)) });
    if (out.length !== Number(size)) fail(DwarfErrorCode.BAD_STRUCTURE, `section ${name} decompresses to ${out.length} bytes, header says ${size}`);
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  } catch (e) {
    if (e instanceof ElfError) throw e;
    return fail(DwarfErrorCode.BAD_STRUCTURE, `section ${name} does not decompress: ${(e as Error).message}`);
  }
}

/** Object files: debug sections hold 0 where the linker would put offsets; apply R_X86_64_32/64. */
function applyRelocations(elf: ElfFile, s: ElfSection, data: Uint8Array): Uint8Array {
  let rs;
  try {
    rs = elf.relocationSections.find((r) => r.target?.index === s.index);
  } catch (e) {
    if (e instanceof ElfError) fail(DwarfErrorCode.BAD_STRUCTURE, `relocations of ${s.name} are broken: ${e.message}`);
    throw e;
  }
  if (!rs) return data;
  const out = new Uint8Array(data);
  const dv = new DataView(out.buffer);
  for (const r of rs.relocations) {
    const v = (r.symbol?.value ?? 0n) + r.addend;
    const off = Number(r.offset);
    if (r.type === C.R_X86_64_32 && r.offset + 4n <= BigInt(out.length)) dv.setUint32(off, Number(v & 0xffffffffn), true);
    else if (r.type === C.R_X86_64_64 && r.offset + 8n <= BigInt(out.length)) dv.setBigUint64(off, BigInt.asUintN(64, v), true);
  }
  return out;
}

/**
 * Reads struct layouts and per-function struct usage from the DWARF of `elf`.
 * Returns null when the file has no .debug_info. Throws ElfError DWARF_* on malformed DWARF.
 */
export function readDwarf(elf: ElfFile, options: DwarfReadOptions = {}): DwarfInfo | null {
  const info = debugSection(elf, '.debug_info');
  if (!info) return null;
  const abbrev = debugSection(elf, '.debug_abbrev');
  if (!abbrev) fail(DwarfErrorCode.BAD_STRUCTURE, '.debug_info without .debug_abbrev');
  const secs: Sections = {
    info,
    abbrev,
    str: debugSection(elf, '.debug_str'),
    lineStr: debugSection(elf, '.debug_line_str'),
    strOffsets: debugSection(elf, '.debug_str_offsets'),
    types: debugSection(elf, '.debug_types'),
  };
  const { dies, units } = parseAllDies(secs, options.maxDies ?? 10_000_000);
  return analyse(dies, units);
}

const DW_AT_signature = 0x69;
const DW_AT_GNU_dwo_name = 0x2130;
const DW_AT_dwo_name = 0x76;

/**
 * Parses every unit of .debug_info and .debug_types. DIE keys are offsets in .debug_info; DIEs of
 * .debug_types are keyed after the end of .debug_info so the two offset spaces do not collide.
 * DW_FORM_ref_sig8 references are resolved through the type units' signatures at the end.
 */
function parseAllDies(s: Sections, maxDies: number): { dies: Map<number, Die>; units: UnitCtx[] } {
  const dies = new Map<number, Die>();
  const units: UnitCtx[] = [];
  const abbrevCache = new Map<number, Map<number, Abbrev>>();
  const signatures = new Map<bigint, number>();
  const pendingSig: Array<{ die: Die; field: 'type' | 'alias'; sig: bigint }> = [];
  let total = 0;
  const sources = [{ data: s.info, base: 0, what: '.debug_info', types: false }];
  if (s.types) sources.push({ data: s.types, base: s.info.length, what: '.debug_types', types: true });
  for (const src of sources) {
  const c = new Cursor(src.data, 0, src.data.length, src.what);
  const base = src.base;
  while (c.pos < c.end) {
    const unitStart = c.pos;
    let length = c.u32();
    let offsetSize: 4 | 8 = 4;
    if (length === 0xffffffff) {
      length = c.u64n();
      offsetSize = 8;
    } else if (length >= 0xfffffff0) fail(DwarfErrorCode.BAD_STRUCTURE, `reserved unit length 0x${length.toString(16)} at .debug_info offset ${unitStart}`);
    const unitEnd = c.pos + length;
    if (!(unitEnd <= c.end)) fail(DwarfErrorCode.TRUNCATED, `unit at .debug_info offset ${unitStart} (length ${length}) runs past the section`);
    const u = new Cursor(src.data, c.pos, unitEnd, src.what);
    c.pos = unitEnd;
    const version = u.u16();
    if (version < 2 || version > 5) fail(DwarfErrorCode.UNSUPPORTED, `DWARF version ${version} (unit at offset ${unitStart}); versions 2 to 5 are supported`);
    let unitType = src.types ? DW_UT_type : DW_UT_compile;
    let abbrevOff: number;
    let addrSize: number;
    if (version >= 5) {
      unitType = u.u8v();
      addrSize = u.u8v();
      abbrevOff = u.offset(offsetSize);
      if (unitType === DW_UT_skeleton || unitType === DW_UT_split_compile || unitType === DW_UT_split_type) {
        fail(DwarfErrorCode.UNSUPPORTED, 'split DWARF (-gsplit-dwarf, .dwo files) is not supported; build without -gsplit-dwarf');
      }
      if (unitType !== DW_UT_compile && unitType !== DW_UT_partial && unitType !== DW_UT_type) continue; // unknown unit kind: skip it
    } else {
      abbrevOff = u.offset(offsetSize);
      addrSize = u.u8v();
    }
    if (unitType === DW_UT_type) {
      // type_signature, type_offset (offset of the type's DIE from the unit start)
      u.need(8);
      const sig = new DataView(src.data.buffer, src.data.byteOffset + u.pos, 8).getBigUint64(0, true);
      u.skip(8);
      const typeOffset = u.offset(offsetSize);
      if (!signatures.has(sig)) signatures.set(sig, base + unitStart + typeOffset);
    }
    if (addrSize !== 4 && addrSize !== 8) fail(DwarfErrorCode.UNSUPPORTED, `address size ${addrSize} in unit at offset ${unitStart}`);
    let abbrevs = abbrevCache.get(abbrevOff);
    if (!abbrevs) {
      abbrevs = readAbbrevTable(s.abbrev, abbrevOff);
      abbrevCache.set(abbrevOff, abbrevs);
    }
    const ctx: UnitCtx = {
      typeUnit: unitType === DW_UT_type,
      info: { offset: base + unitStart, version, name: '' },
      file: '',
      strOffsetsBase: version >= 5 ? (offsetSize === 8 ? 16 : 8) : 0,
      offsetSize,
    };
    const deferred: Array<{ die: Die; key: 'name' | 'linkageName'; strx: number }> = [];
    const stack: Die[] = [];
    let first = true;
    while (u.pos < u.end) {
      const localOff = u.pos;
      const off = base + localOff;
      const code = u.uleb();
      if (code === 0) {
        stack.pop();
        continue;
      }
      const ab = abbrevs.get(code);
      if (!ab) fail(DwarfErrorCode.BAD_STRUCTURE, `unknown abbreviation code ${code} at .debug_info offset ${off}`);
      if (++total > maxDies) fail(DwarfErrorCode.UNSUPPORTED, `more than ${maxDies} DIEs`);
      const parent = stack[stack.length - 1];
      const die: Die = { off, tag: ab.tag, parent, children: undefined, unit: ctx };
      for (const a of ab.attrs) {
        const v = readForm(u, a.form, a.implicit, version, offsetSize, addrSize, base + unitStart, s);
        if (v === undefined) continue;
        if (typeof v === 'object' && 'sig' in v) {
          if (a.at === DW_AT_type) pendingSig.push({ die, field: 'type', sig: v.sig });
          else if (a.at === DW_AT_signature) pendingSig.push({ die, field: 'alias', sig: v.sig });
          continue;
        }
        if (first && (a.at === DW_AT_GNU_dwo_name || a.at === DW_AT_dwo_name)) {
          fail(DwarfErrorCode.UNSUPPORTED, 'split DWARF (-gsplit-dwarf, .dwo files) is not supported; build without -gsplit-dwarf');
        }
        switch (a.at) {
          case DW_AT_name:
            if (typeof v === 'string') die.name = v;
            else if (typeof v === 'object' && 'strx' in v) deferred.push({ die, key: 'name', strx: v.strx });
            break;
          case DW_AT_linkage_name:
          case DW_AT_MIPS_linkage_name:
            if (typeof v === 'string') die.linkageName = v;
            else if (typeof v === 'object' && 'strx' in v) deferred.push({ die, key: 'linkageName', strx: v.strx });
            break;
          case DW_AT_type:
            if (typeof v === 'number') die.type = v;
            break;
          case DW_AT_containing_type:
            if (typeof v === 'number') die.containingType = v;
            break;
          case DW_AT_byte_size:
            if (typeof v === 'number') die.byteSize = v;
            break;
          case DW_AT_data_member_location:
            if (typeof v === 'number') die.memberLoc = v;
            break;
          case DW_AT_bit_size:
            if (typeof v === 'number') die.bitSize = v;
            break;
          case DW_AT_data_bit_offset:
            if (typeof v === 'number') die.dataBitOffset = v;
            break;
          case DW_AT_bit_offset:
            if (typeof v === 'number') die.oldBitOffset = v;
            break;
          case DW_AT_upper_bound:
            if (typeof v === 'number') die.upperBound = v;
            break;
          case DW_AT_count:
            if (typeof v === 'number') die.count = v;
            break;
          case DW_AT_declaration:
            die.declaration = v !== 0;
            break;
          case DW_AT_external:
            die.external = v !== 0;
            break;
          case DW_AT_specification:
            if (typeof v === 'number') die.spec = v;
            break;
          case DW_AT_abstract_origin:
            if (typeof v === 'number') die.origin = v;
            break;
          case DW_AT_str_offsets_base:
            if (first && typeof v === 'number') ctx.strOffsetsBase = v;
            break;
          case DW_AT_producer:
            if (first && typeof v === 'string') ctx.info.producer = v;
            break;
          default:
        }
        // DW_FORM_exprloc member locations: only the DW_OP_plus_uconst form is a plain offset.
        if (a.at === DW_AT_data_member_location && typeof v === 'string') die.memberLoc = undefined;
      }
      if (hasExprMemberLocation(ab) && die.memberLoc === undefined) die.memberLoc = exprMemberLoc(u.u8, ab, localOff, s, version, offsetSize, addrSize, unitStart);
      if (first) {
        first = false;
        if (die.name !== undefined) ctx.info.name = die.name;
      }
      dies.set(off, die);
      if (parent) (parent.children ??= []).push(die);
      if (ab.children) stack.push(die);
    }
    // Indexed strings resolve once the unit DIE's DW_AT_str_offsets_base is known.
    for (const d of deferred) d.die[d.key] = strx(s, ctx, d.strx);
    const root = dies.get(base + unitStart + unitHeaderSize(version, offsetSize, unitType, src.types));
    if (root?.name !== undefined) ctx.info.name = root.name;
    ctx.file = ctx.info.name.replace(/^.*\//, '');
    units.push(ctx);
  }
  }
  // Unknown signatures (types in another file) stay unresolved: the type reads as '<unknown>'.
  for (const p of pendingSig) p.die[p.field] = signatures.get(p.sig) ?? -1;
  return { dies, units };
}

function unitHeaderSize(version: number, offsetSize: 4 | 8, unitType: number, typesSection: boolean): number {
  const initial = offsetSize === 8 ? 12 : 4;
  if (version < 5) return initial + 2 + offsetSize + 1 + (typesSection ? 8 + offsetSize : 0);
  let n = initial + 2 + 1 + 1 + offsetSize;
  if (unitType === DW_UT_skeleton || unitType === DW_UT_split_compile) n += 8;
  else if (unitType === DW_UT_type || unitType === DW_UT_split_type) n += 8 + offsetSize;
  return n;
}

function hasExprMemberLocation(ab: Abbrev): boolean {
  return ab.attrs.some((a) => a.at === DW_AT_data_member_location && (a.form === DW_FORM_exprloc || a.form === DW_FORM_block1));
}

/** Re-reads a DIE to decode `DW_AT_data_member_location` given as `DW_OP_plus_uconst N` (DWARF 2/3). */
function exprMemberLoc(u8: Uint8Array, ab: Abbrev, off: number, s: Sections, version: number, offsetSize: 4 | 8, addrSize: number, unitStart: number): number | undefined {
  const c = new Cursor(u8, off, u8.length, '.debug_info');
  c.uleb();
  for (const a of ab.attrs) {
    if (a.at === DW_AT_data_member_location && (a.form === DW_FORM_exprloc || a.form === DW_FORM_block1)) {
      const len = a.form === DW_FORM_exprloc ? c.uleb() : c.u8v();
      if (len < 2) return undefined;
      const e = new Cursor(u8, c.pos, Math.min(c.pos + len, u8.length), '.debug_info');
      if (e.u8v() !== DW_OP_plus_uconst) return undefined;
      const v = e.uleb();
      return e.pos === c.pos + len && Number.isFinite(v) ? v : undefined;
    }
    readForm(c, a.form, a.implicit, version, offsetSize, addrSize, unitStart, s);
  }
  return undefined;
}

function strx(s: Sections, ctx: UnitCtx, index: number): string {
  if (!s.strOffsets) fail(DwarfErrorCode.BAD_STRUCTURE, 'DW_FORM_strx without .debug_str_offsets');
  const at = ctx.strOffsetsBase + index * ctx.offsetSize;
  if (!(at >= 0 && at + ctx.offsetSize <= s.strOffsets.length)) fail(DwarfErrorCode.OUT_OF_RANGE, `string index ${index} is outside .debug_str_offsets`);
  const c = new Cursor(s.strOffsets, at, s.strOffsets.length, '.debug_str_offsets');
  return stringAt(s.str, c.offset(ctx.offsetSize), '.debug_str');
}

/**
 * Reads (or skips) one attribute value. Returns a number for constants, flags and references
 * (references made absolute), a string for inline/strp/line_strp strings, `{strx}` for indexed
 * strings, undefined for values this reader does not use (blocks, addresses, section offsets...).
 */
function readForm(c: Cursor, form: number, implicit: number, version: number, offsetSize: 4 | 8, addrSize: number, unitStart: number, s: Sections, depth = 0): RawValue {
  switch (form) {
    case DW_FORM_addr:
      c.skip(addrSize);
      return undefined;
    case DW_FORM_block2:
      c.skip(c.u16());
      return undefined;
    case DW_FORM_block4:
      c.skip(c.u32());
      return undefined;
    case DW_FORM_data1:
    case DW_FORM_flag:
      return c.u8v();
    case DW_FORM_data2:
      return c.u16();
    case DW_FORM_data4:
      return c.u32();
    case DW_FORM_data8:
      return c.u64n();
    case DW_FORM_data16:
      c.skip(16);
      return undefined;
    case DW_FORM_sdata:
      return c.sleb();
    case DW_FORM_udata:
      return c.uleb();
    case DW_FORM_string:
      return c.cstring();
    case DW_FORM_block:
    case DW_FORM_exprloc: {
      const n = c.uleb();
      c.skip(n);
      return form === DW_FORM_exprloc ? '' : undefined;
    }
    case DW_FORM_block1:
      c.skip(c.u8v());
      return '';
    case DW_FORM_strp:
      return stringAt(s.str, c.offset(offsetSize), '.debug_str');
    case DW_FORM_line_strp:
      return stringAt(s.lineStr, c.offset(offsetSize), '.debug_line_str');
    case DW_FORM_strp_sup:
    case DW_FORM_GNU_strp_alt:
      c.offset(offsetSize);
      return '<alt>';
    case DW_FORM_ref_addr:
      return c.offset(version <= 2 ? (addrSize as 4 | 8) : offsetSize);
    case DW_FORM_ref1:
      return unitStart + c.u8v();
    case DW_FORM_ref2:
      return unitStart + c.u16();
    case DW_FORM_ref4:
      return unitStart + c.u32();
    case DW_FORM_ref8:
      return unitStart + c.u64n();
    case DW_FORM_ref_udata:
      return unitStart + c.uleb();
    case DW_FORM_ref_sig8: {
      c.need(8);
      const sig = new DataView(c.u8.buffer, c.u8.byteOffset + c.pos, 8).getBigUint64(0, true);
      c.skip(8);
      return { sig };
    }
    case DW_FORM_ref_sup8:
      c.skip(8);
      return undefined;
    case DW_FORM_ref_sup4:
      c.skip(4);
      return undefined;
    case DW_FORM_GNU_ref_alt:
      c.offset(offsetSize);
      return undefined;
    case DW_FORM_indirect: {
      if (depth > 2) fail(DwarfErrorCode.BAD_STRUCTURE, 'DW_FORM_indirect chain');
      return readForm(c, c.uleb(), implicit, version, offsetSize, addrSize, unitStart, s, depth + 1);
    }
    case DW_FORM_sec_offset:
      c.offset(offsetSize);
      return undefined;
    case DW_FORM_flag_present:
      return 1;
    case DW_FORM_implicit_const:
      return implicit;
    case DW_FORM_strx:
    case DW_FORM_GNU_str_index:
      return { strx: c.uleb() };
    case DW_FORM_strx1:
      return { strx: c.u8v() };
    case DW_FORM_strx2:
      return { strx: c.u16() };
    case DW_FORM_strx3:
      return { strx: c.u24() };
    case DW_FORM_strx4:
      return { strx: c.u32() };
    case DW_FORM_addrx:
    case DW_FORM_loclistx:
    case DW_FORM_rnglistx:
    case DW_FORM_GNU_addr_index:
      c.uleb();
      return undefined;
    case DW_FORM_addrx1:
      c.skip(1);
      return undefined;
    case DW_FORM_addrx2:
      c.skip(2);
      return undefined;
    case DW_FORM_addrx3:
      c.skip(3);
      return undefined;
    case DW_FORM_addrx4:
      c.skip(4);
      return undefined;
    default:
      return fail(DwarfErrorCode.UNSUPPORTED, `unknown attribute form 0x${form.toString(16)} at .debug_info offset ${c.pos}; its size is unknown, so the rest cannot be read`);
  }
}

const WRAPPERS = new Set([
  DW_TAG_pointer_type,
  DW_TAG_reference_type,
  DW_TAG_rvalue_reference_type,
  DW_TAG_const_type,
  DW_TAG_volatile_type,
  DW_TAG_restrict_type,
  DW_TAG_atomic_type,
  DW_TAG_typedef,
  DW_TAG_array_type,
  DW_TAG_ptr_to_member_type,
]);
const AGGREGATES: Record<number, DwarfStruct['kind']> = {
  [DW_TAG_structure_type]: 'struct',
  [DW_TAG_union_type]: 'union',
  [DW_TAG_class_type]: 'class',
};
const MAX_TYPE_DEPTH = 64;

function analyse(dies: Map<number, Die>, units: UnitCtx[]): DwarfInfo {
  // Anonymous aggregates named by a typedef: typedef DIE's target → typedef name.
  const typedefNames = new Map<number, string>();
  for (const d of dies.values()) {
    if (d.tag === DW_TAG_typedef && d.name !== undefined && d.type !== undefined) {
      const t = dies.get(d.type);
      if (t && AGGREGATES[t.tag] && t.name === undefined && !typedefNames.has(t.off)) typedefNames.set(t.off, d.name);
    }
  }

  // A declaration stub with DW_AT_signature may carry no name: its type unit's type has it.
  const nameOf = (d: Die): string | undefined => d.name ?? (d.alias !== undefined ? dies.get(d.alias)?.name : undefined);
  const qualifiedName = (d: Die): string | undefined => {
    if (d.name === undefined) return undefined;
    const parts = [d.name];
    // A definition placed outside its scope (type units, C++ out-of-class definitions) names its
    // declaration with DW_AT_specification; the declaration sits in the right namespace.
    let scope: Die = d;
    for (let n = 0; scope.spec !== undefined && n < 8; n++) {
      const decl = dies.get(scope.spec);
      if (!decl || decl === scope) break;
      scope = decl;
    }
    for (let p = scope.parent, n = 0; p && n < MAX_TYPE_DEPTH; p = p.parent, n++) {
      const pn = nameOf(p);
      if ((p.tag === DW_TAG_namespace || AGGREGATES[p.tag]) && pn !== undefined) parts.unshift(pn);
    }
    return parts.join('::');
  };

  const aggregateKey = (d: Die): string | undefined => {
    const kind = AGGREGATES[d.tag]!;
    const q = qualifiedName(d);
    if (q !== undefined) return `${kind} ${q}`;
    const td = typedefNames.get(d.off);
    return td !== undefined ? `typedef ${td}` : undefined;
  };

  const typeNameMemo = new Map<number, string>();
  const typeName = (ref: number | undefined, depth = 0): string => {
    if (ref === undefined) return 'void';
    const memo = typeNameMemo.get(ref);
    if (memo !== undefined) return memo;
    if (depth > MAX_TYPE_DEPTH) return '…';
    const d = dies.get(ref);
    if (!d) return '<unknown>';
    let s: string;
    switch (d.tag) {
      case DW_TAG_pointer_type:
        s = `${typeName(d.type, depth + 1)} *`;
        break;
      case DW_TAG_reference_type:
        s = `${typeName(d.type, depth + 1)} &`;
        break;
      case DW_TAG_rvalue_reference_type:
        s = `${typeName(d.type, depth + 1)} &&`;
        break;
      case DW_TAG_const_type:
        s = `const ${typeName(d.type, depth + 1)}`;
        break;
      case DW_TAG_volatile_type:
        s = `volatile ${typeName(d.type, depth + 1)}`;
        break;
      case DW_TAG_restrict_type:
        s = `${typeName(d.type, depth + 1)} restrict`;
        break;
      case DW_TAG_atomic_type:
        s = `_Atomic ${typeName(d.type, depth + 1)}`;
        break;
      case DW_TAG_array_type: {
        const dims = (d.children ?? [])
          .filter((c) => c.tag === DW_TAG_subrange_type)
          .map((c) => (c.count !== undefined ? `[${c.count}]` : c.upperBound !== undefined ? `[${c.upperBound + 1}]` : '[]'));
        s = `${typeName(d.type, depth + 1)}${dims.join('') || '[]'}`;
        break;
      }
      case DW_TAG_structure_type:
      case DW_TAG_union_type:
      case DW_TAG_class_type: {
        if (d.alias !== undefined && d.alias !== ref) {
          s = typeName(d.alias, depth + 1); // declaration stub for a type-unit type
          break;
        }
        const kind = AGGREGATES[d.tag]!;
        const q = qualifiedName(d);
        s = q !== undefined ? `${kind} ${q}` : (typedefNames.get(d.off) ?? `${kind} <anonymous>`);
        break;
      }
      case DW_TAG_enumeration_type:
        s = `enum ${qualifiedName(d) ?? '<anonymous>'}`;
        break;
      case DW_TAG_subroutine_type:
        s = `${typeName(d.type, depth + 1)} (*)()`;
        break;
      case DW_TAG_ptr_to_member_type:
        s = `${typeName(d.type, depth + 1)} ${typeName(d.containingType, depth + 1)}::*`;
        break;
      default:
        s = qualifiedName(d) ?? '<unnamed>';
    }
    typeNameMemo.set(ref, s);
    return s;
  };

  const byteSizeOf = (ref: number | undefined): number | undefined => {
    for (let r = ref, n = 0; r !== undefined && n < MAX_TYPE_DEPTH; n++) {
      const d = dies.get(r);
      if (!d) return undefined;
      if (d.byteSize !== undefined) return d.byteSize;
      r = d.tag === DW_TAG_typedef || d.tag === DW_TAG_const_type || d.tag === DW_TAG_volatile_type ? d.type : undefined;
    }
    return undefined;
  };

  // Each wrapper has one DW_AT_type, so a reference leads down one path: walk it once, and memoise
  // the leaf's key for every DIE on the path (linear overall, loops in hostile input end it).
  const leafMemo = new Map<number, string | null>();
  const aggregateOf = (ref: number | undefined): string | null => {
    const path: number[] = [];
    let result: string | null = null;
    const onPath = new Set<number>();
    for (let r = ref; r !== undefined; ) {
      const memo = leafMemo.get(r);
      if (memo !== undefined) {
        result = memo;
        break;
      }
      if (onPath.has(r)) break;
      onPath.add(r);
      path.push(r);
      const d = dies.get(r);
      if (!d) break;
      if (AGGREGATES[d.tag]) {
        if (d.alias !== undefined && !onPath.has(d.alias)) {
          r = d.alias; // declaration stub for a type-unit type
          continue;
        }
        // A declaration-only struct still names the type; the key is what matters here.
        result = aggregateKey(d) ?? null;
        break;
      }
      r = WRAPPERS.has(d.tag) ? d.type : undefined;
    }
    for (const p of path) leafMemo.set(p, result);
    return result;
  };

  // Struct layouts, flattened through anonymous members.
  const layouts = new Map<string, DwarfStruct>();
  const structList: DwarfStruct[] = [];
  const byKey = new Map<string, DwarfStruct[]>();
  // Hostile DWARF can nest anonymous aggregates into a DAG that flattens exponentially: budget it.
  const MEMBER_BUDGET = 1 << 17;
  let budget = 0;
  // Across all structs too: a legitimate anonymous type is flattened once, into its one user.
  let totalBudget = 4 * dies.size + (1 << 20);
  const collectMembers = (agg: Die, base: number | null, prefix: string, out: DwarfMember[], depth: number, uses: Set<string>): void => {
    for (const m of agg.children ?? []) {
      if (--budget < 0 || --totalBudget < 0) fail(DwarfErrorCode.BAD_STRUCTURE, `a struct flattens to more than ${MEMBER_BUDGET} members (anonymous members nested at .debug_info offset ${agg.off})`);
      if (m.tag !== DW_TAG_member || m.declaration) continue; // static data members are declarations
      const rel = m.memberLoc ?? (m.dataBitOffset !== undefined && m.bitSize === undefined ? Math.floor(m.dataBitOffset / 8) : agg.tag === DW_TAG_union_type ? 0 : undefined);
      const offset = base === null || rel === undefined ? null : base + rel;
      const t = m.type !== undefined ? dies.get(m.type) : undefined;
      const anonAgg = t && AGGREGATES[t.tag] && t.name === undefined && t.alias === undefined && !t.declaration && !typedefNames.has(t.off);
      if (anonAgg && depth < MAX_TYPE_DEPTH && t !== agg) {
        collectMembers(t, offset, m.name !== undefined ? `${prefix}${m.name}.` : prefix, out, depth + 1, uses);
        continue;
      }
      const used = aggregateOf(m.type);
      if (used !== null) uses.add(used);
      const member: DwarfMember = { name: `${prefix}${m.name ?? '<unnamed>'}`, offset, type: typeName(m.type) };
      if (m.bitSize !== undefined) {
        // Bit-fields: position in bits from the start of the outermost struct, whichever DWARF
        // version described it; `offset` is null so both versions compare alike.
        member.offset = null;
        member.bitSize = m.bitSize;
        if (base !== null && m.dataBitOffset !== undefined) member.bitOffset = base * 8 + m.dataBitOffset;
        else if (offset !== null && m.oldBitOffset !== undefined) {
          // DWARF 2–4: counted from the MSB of a storage unit of DW_AT_byte_size (little-endian).
          const storage = (m.byteSize ?? byteSizeOf(m.type) ?? 0) * 8;
          member.bitOffset = offset * 8 + storage - m.oldBitOffset - m.bitSize;
        } else if (offset !== null) member.bitOffset = offset * 8;
      }
      out.push(member);
    }
  };
  for (const d of dies.values()) {
    const kind = AGGREGATES[d.tag];
    if (!kind || d.declaration) continue;
    const key = aggregateKey(d);
    if (key === undefined) continue;
    const members: DwarfMember[] = [];
    const uses = new Set<string>();
    budget = MEMBER_BUDGET;
    collectMembers(d, 0, '', members, 0, uses);
    const st: DwarfStruct = {
      kind,
      name: qualifiedName(d) ?? typedefNames.get(d.off)!,
      anonymous: d.name === undefined,
      key,
      byteSize: d.byteSize ?? null,
      members,
      memberStructs: [...uses].sort(),
      units: [],
    };
    const sig = JSON.stringify([key, st.byteSize, members]);
    let known = layouts.get(sig);
    if (!known) {
      known = st;
      layouts.set(sig, st);
      structList.push(st);
      const l = byKey.get(key);
      if (l) l.push(st);
      else byKey.set(key, [st]);
    }
    if (!d.unit.typeUnit && !known.units.includes(d.unit.info.name)) known.units.push(d.unit.info.name);
  }

  // The aggregate a type reference reaches through wrappers (pointer, typedef, cv, array...).
  const functions = new Map<string, DwarfFunction & { set: Set<string> }>();
  const originOf = (d: Die): Die => {
    let cur = d;
    for (let n = 0; n < 8; n++) {
      const next = cur.origin ?? cur.spec;
      const t = next !== undefined ? dies.get(next) : undefined;
      if (!t || t === cur) break;
      cur = t;
    }
    return cur;
  };
  /** The linkage name on the DIE or along its origin/specification chain (where C++ puts it). */
  const linkageOf = (d: Die): string | undefined => {
    let cur: Die | undefined = d;
    for (let n = 0; n < 8 && cur; n++) {
      if (cur.linkageName !== undefined) return cur.linkageName;
      const next: number | undefined = cur.origin ?? cur.spec;
      const t: Die | undefined = next !== undefined ? dies.get(next) : undefined;
      cur = t === cur ? undefined : t;
    }
    return undefined;
  };
  const typeOfVar = (d: Die): number | undefined => {
    if (d.type !== undefined) return d.type;
    return originOf(d).type;
  };
  for (const d of dies.values()) {
    // Declarations (prototypes of called functions, in-class method declarations) are not functions
    // of this unit; definitions reach them through DW_AT_specification.
    if (d.tag !== DW_TAG_subprogram || d.declaration) continue;
    const o = originOf(d);
    const name = qualifiedName(o);
    if (name === undefined) continue;
    // Key by the unit of the origin: with LTO the concrete code sits in an '<artificial>' unit while
    // the abstract function stays in its source unit. Not for type units (methods declared there).
    const unit = o.unit.typeUnit ? d.unit : o.unit;
    const external = (o.external ?? false) || (d.external ?? false);
    const key = `${unit.file}\0${name}`;
    let fn = functions.get(key);
    if (!fn) {
      fn = { name, unit: unit.info.name, file: unit.file, external, structs: [], set: new Set<string>() };
      const linkage = linkageOf(d);
      if (linkage !== undefined && linkage !== name) fn.linkageName = linkage;
      functions.set(key, fn);
    }
    fn.external ||= external;
    const ret = aggregateOf(d.type ?? o.type);
    if (ret !== null) fn.set.add(ret);
    // Parameters and locals, in nested lexical blocks and inlined callees too; not nested functions.
    const stack = [...(d.children ?? [])];
    let guard = 0;
    while (stack.length > 0 && guard++ < 1_000_000) {
      const c = stack.pop()!;
      if (c.tag === DW_TAG_formal_parameter || c.tag === DW_TAG_variable) {
        const k = aggregateOf(typeOfVar(c));
        if (k !== null) fn.set.add(k);
      } else if (c.tag === DW_TAG_lexical_block || c.tag === DW_TAG_inlined_subroutine) {
        // No spread: a block may have more children than a call may take arguments.
        for (const ch of c.children ?? []) stack.push(ch);
      }
    }
  }
  const fnList: DwarfFunction[] = [];
  const fnByName = new Map<string, DwarfFunction[]>();
  for (const f of functions.values()) {
    const { set, ...rest } = f;
    const out: DwarfFunction = { ...rest, structs: [...set].sort() };
    fnList.push(out);
    // Found by its source name and by its symbol name (a C++ method's mangled name is what the
    // symbol table, and so the builder, knows it by).
    for (const n of out.linkageName === undefined ? [out.name] : [out.name, out.linkageName]) {
      const l = fnByName.get(n);
      if (l) l.push(out);
      else fnByName.set(n, [out]);
    }
  }

  return {
    units: units.filter((u) => !u.typeUnit).map((u) => u.info),
    structs: structList,
    functions: fnList,
    findStructs: (key) => byKey.get(key) ?? [],
    reachableStructs: (keys) => {
      const seen = new Set<string>();
      const work = [...keys];
      while (work.length > 0) {
        const k = work.pop()!;
        if (seen.has(k)) continue;
        seen.add(k);
        for (const st of byKey.get(k) ?? []) for (const m of st.memberStructs) work.push(m);
      }
      return [...seen].sort();
    },
    findFunction: (name, file) => {
      const l = fnByName.get(name) ?? [];
      if (file !== undefined) return l.find((f) => f.file === file || f.unit === file);
      return l.find((f) => f.external) ?? l[0];
    },
  };
}
