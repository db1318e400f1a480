/**
 * ELF64 little-endian x86-64 reader: a pure function over bytes. Headers, program headers and
 * section headers are parsed eagerly (a broken one fails `parseElf`); every other table is parsed
 * on first access and cached, and throws `ElfError` at that access when it is broken.
 */
import { ByteReader, ElfErrorCode, StringTable } from './bytes.js';
import * as C from './constants.js';
import type {
  ElfAddressSymbol,
  ElfDynamicEntry,
  ElfDynamicInfo,
  ElfDynamicRelocations,
  ElfHeader,
  ElfNote,
  ElfParseOptions,
  ElfProgramHeader,
  ElfRelocation,
  ElfRelocationSection,
  ElfSection,
  ElfSymbol,
  ElfSymbolQuery,
  ElfSymbolVersion,
} from './types.js';

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;
const RELA_SIZE = 24;
const REL_SIZE = 16;
const DYN_SIZE = 16;

/** Parses an ELF64 little-endian x86-64 file. Throws `ElfError` on malformed input. */
export function parseElf(bytes: Uint8Array, options: ElfParseOptions = {}): ElfFile {
  return new ElfFile(bytes, options);
}

interface VersionDef {
  name: string;
  defined: boolean;
  file?: string;
}

/** A parsed ELF file. Construct with `parseElf`. */
export class ElfFile {
  /** The input bytes (not copied; `sectionData` and friends return views into them). */
  readonly bytes: Uint8Array;
  readonly header: ElfHeader;
  readonly programHeaders: readonly ElfProgramHeader[];
  readonly sections: readonly ElfSection[];

  readonly #r: ByteReader;
  #sectionsByName: Map<string, ElfSection> | undefined;
  #symbols: ElfSymbol[] | undefined;
  #dynsym: ElfSymbol[] | undefined;
  #dynamic: ElfDynamicInfo | null | undefined;
  #dynstr: StringTable | null | undefined;
  #relocSections: ElfRelocationSection[] | undefined;
  #dynRelocs: ElfDynamicRelocations | undefined;
  #notes: ElfNote[] | undefined;
  #byAddress: ElfSymbol[] | undefined;
  #byName: Map<string, ElfSymbol[]> | undefined;
  #dynByName: Map<string, ElfSymbol[]> | undefined;
  readonly #loads: ElfProgramHeader[];

  /** Use `parseElf`. */
  constructor(bytes: Uint8Array, options: ElfParseOptions = {}) {
    if (!(bytes instanceof Uint8Array)) throw new TypeError('parseElf: bytes must be a Uint8Array');
    this.bytes = bytes;
    const r = (this.#r = new ByteReader(bytes, options.name));
    this.header = readHeader(r, options);
    this.sections = options.sectionHeaders === false ? [] : readSections(r, this.header);
    this.programHeaders = readProgramHeaders(r, this.header);
    this.#loads = this.programHeaders.filter((p) => p.type === C.PT_LOAD);
  }

  // ---------------------------------------------------------------- sections and segments

  /** The section called `name`, or undefined. With duplicate names, the first one. */
  findSection(name: string): ElfSection | undefined {
    if (!this.#sectionsByName) {
      const m = new Map<string, ElfSection>();
      for (const s of this.sections) if (!m.has(s.name)) m.set(s.name, s);
      this.#sectionsByName = m;
    }
    return this.#sectionsByName.get(name);
  }

  /** The section called `name`; throws ElfError ELF_NOT_FOUND when absent. */
  getSection(name: string): ElfSection {
    const s = this.findSection(name);
    if (!s) this.#r.fail(ElfErrorCode.NOT_FOUND, `no section named ${name}`);
    return s;
  }

  /** Sections of the given SHT_* type. */
  sectionsOfType(type: number): ElfSection[] {
    return this.sections.filter((s) => s.type === type);
  }

  /** The allocated section whose [addr, addr+size) contains `vaddr`, or undefined. */
  findSectionByVaddr(vaddr: bigint): ElfSection | undefined {
    return this.sections.find((s) => (s.flags & C.SHF_ALLOC) !== 0 && s.size > 0n && vaddr >= s.addr && vaddr < s.addr + s.size);
  }

  /**
   * The bytes of a section, as a view into the input (no copy). SHT_NOBITS gives an empty array.
   * Throws ELF_OUT_OF_RANGE when the section lies outside the file.
   */
  sectionData(section: ElfSection): Uint8Array {
    if (section.type === C.SHT_NOBITS || section.type === C.SHT_NULL) return new Uint8Array(0);
    const off = this.#r.range(section.offset, section.size, `section ${section.index} (${section.name})`);
    return this.bytes.subarray(off, off + Number(section.size));
  }

  /** The file bytes of a segment (p_filesz of them), as a view into the input. */
  segmentData(ph: ElfProgramHeader): Uint8Array {
    const off = this.#r.range(ph.offset, ph.filesz, `segment ${ph.index}`);
    return this.bytes.subarray(off, off + Number(ph.filesz));
  }

  /** PT_LOAD program headers in file order. */
  get loadSegments(): readonly ElfProgramHeader[] {
    return this.#loads;
  }

  /** File offset of the byte at link-time `vaddr` (through PT_LOAD), or undefined when it has no file byte. */
  vaddrToOffset(vaddr: bigint): bigint | undefined {
    for (const p of this.#loads) {
      const filesz = p.filesz < p.memsz ? p.filesz : p.memsz;
      if (vaddr >= p.vaddr && vaddr < p.vaddr + filesz) return p.offset + (vaddr - p.vaddr);
    }
    return undefined;
  }

  /** Link-time vaddr at which file offset `offset` is loaded (through PT_LOAD), or undefined. */
  offsetToVaddr(offset: bigint): bigint | undefined {
    for (const p of this.#loads) {
      const filesz = p.filesz < p.memsz ? p.filesz : p.memsz;
      if (offset >= p.offset && offset < p.offset + filesz) return p.vaddr + (offset - p.offset);
    }
    return undefined;
  }

  /** The PT_LOAD segment whose memory image [vaddr, vaddr+memsz) contains `vaddr`, or undefined. */
  findLoadSegment(vaddr: bigint): ElfProgramHeader | undefined {
    return this.#loads.find((p) => vaddr >= p.vaddr && vaddr < p.vaddr + p.memsz);
  }

  /**
   * `length` bytes of the memory image at link-time `vaddr`, as the loader maps them from the file:
   * the part past p_filesz (bss) is zero. The range must lie inside one PT_LOAD (ELF_OUT_OF_RANGE
   * otherwise). Returns a view into the input when no zero-fill is needed, else a copy.
   */
  readVaddr(vaddr: bigint, length: number): Uint8Array {
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`readVaddr: bad length ${length}`);
    const len = BigInt(length);
    const p = this.#loads.find((q) => vaddr >= q.vaddr && vaddr + len <= q.vaddr + q.memsz);
    if (!p) {
      this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `vaddr range 0x${vaddr.toString(16)}+${length} is not inside one PT_LOAD segment`);
    }
    const filesz = p.filesz < p.memsz ? p.filesz : p.memsz;
    const rel = vaddr - p.vaddr;
    if (rel + len <= filesz) {
      const off = this.#r.range(p.offset + rel, len, `bytes at vaddr 0x${vaddr.toString(16)}`);
      return this.bytes.subarray(off, off + length);
    }
    const out = new Uint8Array(length);
    if (rel < filesz) {
      const n = filesz - rel;
      const off = this.#r.range(p.offset + rel, n, `bytes at vaddr 0x${vaddr.toString(16)}`);
      out.set(this.bytes.subarray(off, off + Number(n)));
    }
    return out;
  }

  /**
   * The file range for [vaddr, vaddr+size) when it lies entirely in the file part of one PT_LOAD.
   * Used for tables the dynamic section points to; never zero-fills (a table in bss is corrupt).
   */
  #fileBytesAtVaddr(vaddr: bigint, size: bigint, what: string): Uint8Array {
    for (const p of this.#loads) {
      const filesz = p.filesz < p.memsz ? p.filesz : p.memsz;
      if (vaddr >= p.vaddr && vaddr + size <= p.vaddr + filesz && size >= 0n) {
        const off = this.#r.range(p.offset + (vaddr - p.vaddr), size, what);
        return this.bytes.subarray(off, off + Number(size));
      }
    }
    return this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `${what} at vaddr 0x${vaddr.toString(16)} (size 0x${size.toString(16)}) is not inside the file part of a PT_LOAD segment`);
  }

  /** File offset of a vaddr (through PT_LOAD), for tables whose size is not known in advance. */
  #fileOffsetOfVaddr(vaddr: bigint, what: string): { offset: number; available: number } {
    for (const p of this.#loads) {
      const filesz = p.filesz < p.memsz ? p.filesz : p.memsz;
      if (vaddr >= p.vaddr && vaddr < p.vaddr + filesz) {
        const fileOff = p.offset + (vaddr - p.vaddr);
        const end = p.offset + filesz;
        const fileEnd = BigInt(this.bytes.length);
        if (fileOff >= fileEnd) break;
        const avail = (end < fileEnd ? end : fileEnd) - fileOff;
        return { offset: Number(fileOff), available: Number(avail) };
      }
    }
    return this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `${what} at vaddr 0x${vaddr.toString(16)} is not inside the file part of a PT_LOAD segment`);
  }

  // ---------------------------------------------------------------- convenience

  /** ET_DYN position-independent executable (DF_1_PIE, or PT_INTERP without DT_SONAME). */
  get isPie(): boolean {
    if (this.header.type !== C.ET_DYN) return false;
    const dyn = this.dynamic;
    if (dyn && (dyn.flags1 & C.DF_1_PIE) !== 0) return true;
    return this.interpreter !== undefined && dyn?.soname === undefined;
  }

  /** ET_DYN that is not a PIE executable. */
  get isSharedLibrary(): boolean {
    return this.header.type === C.ET_DYN && !this.isPie;
  }

  /** The PT_INTERP path (e.g. /lib64/ld-linux-x86-64.so.2), or undefined. */
  get interpreter(): string | undefined {
    const p = this.programHeaders.find((q) => q.type === C.PT_INTERP);
    if (!p) return undefined;
    const data = this.segmentData(p);
    const nul = data.indexOf(0);
    return new TextDecoder().decode(nul >= 0 ? data.subarray(0, nul) : data);
  }

  // ---------------------------------------------------------------- symbols

  /** .symtab (empty when the file has none, e.g. stripped). Lazy; throws ElfError when broken. */
  get symbols(): readonly ElfSymbol[] {
    if (!this.#symbols) {
      const s = this.sections.find((q) => q.type === C.SHT_SYMTAB);
      this.#symbols = s ? this.#readSymbolSection(s, false) : [];
    }
    return this.#symbols;
  }

  /**
   * Takes the .symtab of `debug` — a separate debug file (`objcopy --only-keep-debug`, the files of
   * /usr/lib/debug/.build-id/) or an unstripped copy of this very build — for a stripped file. The
   * caller checks that both have the same build-id. Section indexes are mapped by section name and
   * address (stripping renumbers sections); symbols of sections this file lacks are dropped.
   */
  adoptSymbols(debug: ElfFile): void {
    // Static relocations kept in this file name its own .symtab: resolve them first.
    void this.relocationSections;
    const map = new Map<number, number>();
    debug.sections.forEach((s, i) => {
      const j = this.sections.findIndex((t) => t.name === s.name && t.addr === s.addr && (t.flags & C.SHF_ALLOC) === (s.flags & C.SHF_ALLOC));
      if (j >= 0) map.set(i, j);
    });
    const out: ElfSymbol[] = [];
    for (const s of debug.symbols) {
      if (s.shndx === C.SHN_UNDEF || s.shndx >= 0xff00) {
        out.push({ ...s });
        continue;
      }
      const j = map.get(s.shndx);
      if (j !== undefined) out.push({ ...s, shndx: j });
    }
    this.#symbols = out;
    this.#byAddress = undefined;
    this.#byName = undefined;
  }

  /**
   * .dynsym with versions (from sections, or through DT_SYMTAB/DT_STRTAB and DT_HASH/DT_GNU_HASH
   * when section headers are stripped). Lazy; throws ElfError when broken.
   */
  get dynamicSymbols(): readonly ElfSymbol[] {
    if (!this.#dynsym) {
      const s = this.sections.find((q) => q.type === C.SHT_DYNSYM);
      let syms: ElfSymbol[];
      if (s) {
        syms = this.#readSymbolSection(s, true);
      } else {
        syms = this.#readDynsymFromDynamic();
      }
      this.#attachVersions(syms, s);
      this.#dynsym = syms;
    }
    return this.#dynsym;
  }

  /** Defined STT_FUNC / STT_GNU_IFUNC symbols with size > 0 (from .symtab, else .dynsym). */
  functionSymbols(): ElfSymbol[] {
    const table = this.symbols.length > 0 ? this.symbols : this.dynamicSymbols;
    return table.filter(
      (s) => (s.type === C.STT_FUNC || s.type === C.STT_GNU_IFUNC) && s.size > 0n && s.shndx !== C.SHN_UNDEF,
    );
  }

  /**
   * The symbol containing `vaddr`, else the nearest one before it (from .symtab, else .dynsym;
   * defined code/data symbols only). Undefined when no symbol starts at or before `vaddr`.
   */
  findSymbolByAddress(vaddr: bigint): ElfAddressSymbol | undefined {
    const arr = this.#addressIndex();
    let lo = 0;
    let hi = arr.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (arr[mid]!.value <= vaddr) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return undefined;
    const best = arr[lo - 1]!;
    // A nested or overlapping symbol further back may contain the address when `best` does not.
    if (!(vaddr < best.value + best.size)) {
      for (let i = lo - 2, n = 0; i >= 0 && n < 16; i--, n++) {
        const s = arr[i]!;
        if (vaddr < s.value + s.size) return { symbol: s, offset: vaddr - s.value, contains: true };
      }
    }
    return { symbol: best, offset: vaddr - best.value, contains: vaddr < best.value + best.size || vaddr === best.value };
  }

  #addressIndex(): ElfSymbol[] {
    if (!this.#byAddress) {
      const table = this.symbols.length > 0 ? this.symbols : this.dynamicSymbols;
      const arr = table.filter(
        (s) =>
          s.shndx !== C.SHN_UNDEF &&
          s.shndx !== C.SHN_ABS &&
          s.shndx !== C.SHN_COMMON &&
          (s.type === C.STT_FUNC || s.type === C.STT_OBJECT || s.type === C.STT_GNU_IFUNC || s.type === C.STT_NOTYPE) &&
          s.name !== '',
      );
      // Equal addresses: the most descriptive symbol sorts last, which is where the search lands.
      const rank = (s: ElfSymbol) =>
        (s.size > 0n ? 4 : 0) + (s.type !== C.STT_NOTYPE ? 2 : 0) + (s.bind !== C.STB_LOCAL ? 1 : 0);
      arr.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : rank(a) - rank(b)));
      this.#byAddress = arr;
    }
    return this.#byAddress;
  }

  /**
   * Every symbol called `name`, in table order: .symtab then .dynsym (`table` 'any', the default),
   * or one table. The name index of a table is built on first use, so a .dynsym-only lookup never
   * parses a large .symtab.
   */
  symbolsNamed(name: string, table: 'symtab' | 'dynsym' | 'any' = 'any'): ElfSymbol[] {
    if (table === 'symtab') return this.#nameIndex(false).get(name) ?? [];
    if (table === 'dynsym') return this.#nameIndex(true).get(name) ?? [];
    const a = this.#nameIndex(false).get(name);
    const b = this.#nameIndex(true).get(name);
    return a && b ? [...a, ...b] : (a ?? b ?? []);
  }

  #nameIndex(dynamic: boolean): Map<string, ElfSymbol[]> {
    let m = dynamic ? this.#dynByName : this.#byName;
    if (!m) {
      m = new Map<string, ElfSymbol[]>();
      for (const s of dynamic ? this.dynamicSymbols : this.symbols) {
        if (s.name === '' || s.type === C.STT_FILE || s.type === C.STT_SECTION) continue;
        const l = m.get(s.name);
        if (l) l.push(s);
        else m.set(s.name, [s]);
      }
      if (dynamic) this.#dynByName = m;
      else this.#byName = m;
    }
    return m;
  }

  /**
   * The symbol called `name`, or undefined. Globals/weaks are preferred over locals unless `file`
   * asks for a local of one STT_FILE; `version` picks a dynamic symbol version.
   */
  findSymbol(name: string, query: ElfSymbolQuery = {}): ElfSymbol | undefined {
    const table = query.table ?? 'any';
    const definedOnly = query.defined ?? true;
    const candidates = this.symbolsNamed(name, table).filter(
      (s) =>
        (!definedOnly || s.shndx !== C.SHN_UNDEF) &&
        (query.file === undefined || (s.bind === C.STB_LOCAL && s.file === query.file)) &&
        (query.version === undefined || s.version?.name === query.version),
    );
    return candidates.find((s) => s.bind !== C.STB_LOCAL) ?? candidates[0];
  }

  /** Like `findSymbol`, but throws ElfError ELF_NOT_FOUND when there is no match. */
  getSymbol(name: string, query: ElfSymbolQuery = {}): ElfSymbol {
    const s = this.findSymbol(name, query);
    if (!s) {
      const extra = [query.file && `file ${query.file}`, query.version && `version ${query.version}`].filter(Boolean).join(', ');
      this.#r.fail(ElfErrorCode.NOT_FOUND, `no symbol ${name}${extra ? ` (${extra})` : ''}`);
    }
    return s;
  }

  #sectionAt(index: number, what: string): ElfSection {
    const s = this.sections[index];
    if (!s) this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `${what}: section index ${index} does not exist (${this.sections.length} sections)`);
    return s;
  }

  #stringSection(index: number, what: string): StringTable {
    const s = this.#sectionAt(index, what);
    if (s.type !== C.SHT_STRTAB) {
      this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `${what}: sh_link ${index} (${s.name}) is not a string table`);
    }
    return new StringTable(this.sectionData(s), `string table ${s.name}`, this.#r.label);
  }

  #readSymbolSection(s: ElfSection, dynamic: boolean): ElfSymbol[] {
    if (s.entsize !== BigInt(SYM_SIZE)) {
      this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `symbol table ${s.name} has entry size ${s.entsize}, expected ${SYM_SIZE}`);
    }
    const data = this.sectionData(s);
    const strtab = this.#stringSection(s.link, `symbol table ${s.name}`);
    let xindex: Uint8Array | undefined;
    const shndxSec = this.sections.find((q) => q.type === C.SHT_SYMTAB_SHNDX && q.link === s.index);
    if (shndxSec) xindex = this.sectionData(shndxSec);
    return this.#decodeSymbols(data, Math.floor(data.length / SYM_SIZE), strtab, dynamic, xindex);
  }

  #decodeSymbols(data: Uint8Array, count: number, strtab: StringTable, dynamic: boolean, xindex?: Uint8Array): ElfSymbol[] {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const xdv = xindex ? new DataView(xindex.buffer, xindex.byteOffset, xindex.byteLength) : undefined;
    const out: ElfSymbol[] = new Array(count);
    let file: string | undefined;
    for (let i = 0; i < count; i++) {
      const o = i * SYM_SIZE;
      const info = dv.getUint8(o + 4);
      const other = dv.getUint8(o + 5);
      let shndx = dv.getUint16(o + 6, true);
      if (shndx === C.SHN_XINDEX && xdv) {
        if ((i + 1) * 4 > xdv.byteLength) this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `symbol ${i}: SHT_SYMTAB_SHNDX too short`);
        shndx = xdv.getUint32(i * 4, true);
      }
      const type = info & 0xf;
      const bind = info >> 4;
      const name = strtab.get(dv.getUint32(o, true));
      const sym: ElfSymbol = {
        index: i,
        name,
        value: dv.getBigUint64(o + 8, true),
        size: dv.getBigUint64(o + 16, true),
        type,
        bind,
        visibility: other & 3,
        other,
        shndx,
        dynamic,
      };
      if (type === C.STT_FILE) file = name === '' ? undefined : name;
      else if (bind === C.STB_LOCAL && !dynamic && file !== undefined) sym.file = file;
      out[i] = sym;
    }
    return out;
  }

  #readDynsymFromDynamic(): ElfSymbol[] {
    const dyn = this.dynamic;
    if (!dyn || dyn.symtab === undefined) return [];
    const count = this.#dynsymCount(dyn);
    if (count === 0) return [];
    const entsize = dyn.get(C.DT_SYMENT);
    if (entsize !== undefined && entsize !== BigInt(SYM_SIZE)) {
      this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `DT_SYMENT is ${entsize}, expected ${SYM_SIZE}`);
    }
    const data = this.#fileBytesAtVaddr(dyn.symtab, BigInt(count) * BigInt(SYM_SIZE), 'DT_SYMTAB');
    const strtab = this.#dynamicStrings(dyn);
    if (!strtab) this.#r.fail(ElfErrorCode.BAD_STRUCTURE, 'DT_SYMTAB without DT_STRTAB');
    return this.#decodeSymbols(data, count, strtab, true);
  }

  /** Number of dynamic symbols from DT_HASH (nchain) or DT_GNU_HASH (highest chain end). */
  #dynsymCount(dyn: ElfDynamicInfo): number {
    if (dyn.hash !== undefined) {
      const h = this.#fileBytesAtVaddr(dyn.hash, 8n, 'DT_HASH');
      return new DataView(h.buffer, h.byteOffset, 8).getUint32(4, true);
    }
    if (dyn.gnuHash === undefined) return 0;
    const { offset, available } = this.#fileOffsetOfVaddr(dyn.gnuHash, 'DT_GNU_HASH');
    const r = this.#r;
    if (available < 16) r.fail(ElfErrorCode.OUT_OF_RANGE, 'DT_GNU_HASH header truncated');
    const nbuckets = r.u32(offset);
    const symoffset = r.u32(offset + 4);
    const bloomSize = r.u32(offset + 8);
    const bucketsAt = 16 + bloomSize * 8;
    const chainsAt = bucketsAt + nbuckets * 4;
    if (chainsAt > available) r.fail(ElfErrorCode.OUT_OF_RANGE, 'DT_GNU_HASH buckets outside the file');
    let max = 0;
    for (let i = 0; i < nbuckets; i++) max = Math.max(max, r.u32(offset + bucketsAt + i * 4));
    if (max === 0) return symoffset;
    if (max < symoffset) r.fail(ElfErrorCode.BAD_STRUCTURE, 'DT_GNU_HASH bucket below symoffset');
    // Walk the last chain to its end (low bit set); bounded by the bytes available.
    for (let i = max; ; i++) {
      const at = chainsAt + (i - symoffset) * 4;
      if (at + 4 > available) r.fail(ElfErrorCode.OUT_OF_RANGE, 'DT_GNU_HASH chain runs outside the file');
      if ((r.u32(offset + at) & 1) !== 0) return i + 1;
    }
  }

  #attachVersions(syms: ElfSymbol[], dynsymSection: ElfSection | undefined): void {
    let versym: Uint8Array | undefined;
    let verdef: { data: Uint8Array; count: number; strtab: StringTable } | undefined;
    let verneed: { data: Uint8Array; count: number; strtab: StringTable } | undefined;
    if (dynsymSection) {
      const vs = this.sections.find((q) => q.type === C.SHT_GNU_versym);
      if (!vs) return;
      if (vs.link !== dynsymSection.index) {
        this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `.gnu.version links section ${vs.link}, not the dynamic symbol table`);
      }
      versym = this.sectionData(vs);
      const vd = this.sections.find((q) => q.type === C.SHT_GNU_verdef);
      if (vd) verdef = { data: this.sectionData(vd), count: vd.info, strtab: this.#stringSection(vd.link, vd.name) };
      const vn = this.sections.find((q) => q.type === C.SHT_GNU_verneed);
      if (vn) verneed = { data: this.sectionData(vn), count: vn.info, strtab: this.#stringSection(vn.link, vn.name) };
    } else {
      const dyn = this.dynamic;
      if (!dyn || dyn.versym === undefined) return;
      versym = this.#fileBytesAtVaddr(dyn.versym, BigInt(syms.length) * 2n, 'DT_VERSYM');
      const strtab = this.#dynamicStrings(dyn);
      if (!strtab) this.#r.fail(ElfErrorCode.BAD_STRUCTURE, 'DT_VERSYM without DT_STRTAB');
      if (dyn.verdef !== undefined) {
        const { offset, available } = this.#fileOffsetOfVaddr(dyn.verdef, 'DT_VERDEF');
        verdef = { data: this.bytes.subarray(offset, offset + available), count: Number((dyn.get(C.DT_VERDEFNUM) ?? 0n) & 0xffffn), strtab };
      }
      if (dyn.verneed !== undefined) {
        const { offset, available } = this.#fileOffsetOfVaddr(dyn.verneed, 'DT_VERNEED');
        verneed = { data: this.bytes.subarray(offset, offset + available), count: Number((dyn.get(C.DT_VERNEEDNUM) ?? 0n) & 0xffffn), strtab };
      }
    }
    const defs = new Map<number, VersionDef>();
    if (verdef) this.#readVerdef(verdef.data, verdef.count, verdef.strtab, defs);
    if (verneed) this.#readVerneed(verneed.data, verneed.count, verneed.strtab, defs);
    if (versym.length < syms.length * 2) {
      this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `.gnu.version has ${versym.length >> 1} entries for ${syms.length} dynamic symbols`);
    }
    const dv = new DataView(versym.buffer, versym.byteOffset, versym.byteLength);
    for (const s of syms) {
      const raw = dv.getUint16(s.index * 2, true);
      const ndx = raw & C.VERSYM_VERSION;
      if (ndx === C.VER_NDX_LOCAL || ndx === C.VER_NDX_GLOBAL) continue;
      const d = defs.get(ndx);
      if (!d) {
        this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `dynamic symbol ${s.index} (${s.name}) has version index ${ndx}, which no version definition or need declares`);
      }
      const v: ElfSymbolVersion = { index: ndx, name: d.name, hidden: (raw & C.VERSYM_HIDDEN) !== 0, defined: d.defined };
      if (d.file !== undefined) v.file = d.file;
      s.version = v;
    }
  }

  /** Elf64_Verdef (20 bytes) chains with Elf64_Verdaux (8 bytes); bounded by count and by bytes. */
  #readVerdef(data: Uint8Array, count: number, strtab: StringTable, out: Map<number, VersionDef>): void {
    const r = this.#r;
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const seen = new Set<number>();
    let off = 0;
    for (let i = 0; i < count; i++) {
      if (seen.has(off)) r.fail(ElfErrorCode.BAD_STRUCTURE, '.gnu.version_d: vd_next loops');
      seen.add(off);
      if (off + 20 > data.length) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_d: entry outside the section');
      const ndx = dv.getUint16(off + 4, true);
      const cnt = dv.getUint16(off + 6, true);
      const aux = dv.getUint32(off + 12, true);
      const next = dv.getUint32(off + 16, true);
      if (cnt > 0) {
        // Only the first Verdaux names the version; the others name parents.
        const a = off + aux;
        if (a + 8 > data.length) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_d: vd_aux outside the section');
        out.set(ndx, { name: strtab.get(dv.getUint32(a, true)), defined: true });
      }
      if (next === 0) break;
      off += next;
      if (off >= data.length) {
        if (i + 1 < count) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_d: vd_next outside the section');
        break;
      }
    }
  }

  /** Elf64_Verneed (16 bytes) chains with Elf64_Vernaux (16 bytes); bounded by count and by bytes. */
  #readVerneed(data: Uint8Array, count: number, strtab: StringTable, out: Map<number, VersionDef>): void {
    const r = this.#r;
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const seen = new Set<number>();
    let off = 0;
    for (let i = 0; i < count; i++) {
      if (seen.has(off)) r.fail(ElfErrorCode.BAD_STRUCTURE, '.gnu.version_r: vn_next loops');
      seen.add(off);
      if (off + 16 > data.length) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_r: entry outside the section');
      const cnt = dv.getUint16(off + 2, true);
      const file = strtab.get(dv.getUint32(off + 4, true));
      const aux = dv.getUint32(off + 8, true);
      const next = dv.getUint32(off + 12, true);
      let a = off + aux;
      for (let j = 0; j < cnt; j++) {
        if (seen.has(a)) r.fail(ElfErrorCode.BAD_STRUCTURE, '.gnu.version_r: vna_next loops');
        seen.add(a);
        if (a + 16 > data.length) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_r: vn_aux outside the section');
        const other = dv.getUint16(a + 6, true);
        const name = strtab.get(dv.getUint32(a + 8, true));
        const anext = dv.getUint32(a + 12, true);
        out.set(other & C.VERSYM_VERSION, { name, defined: false, file });
        if (anext === 0) break;
        a += anext;
      }
      if (next === 0) break;
      off += next;
      if (off >= data.length) {
        if (i + 1 < count) r.fail(ElfErrorCode.OUT_OF_RANGE, '.gnu.version_r: vn_next outside the section');
        break;
      }
    }
  }

  // ---------------------------------------------------------------- dynamic section

  /**
   * The dynamic section (from PT_DYNAMIC, else the SHT_DYNAMIC section), or null when the file has
   * none. Lazy; throws ElfError when broken.
   */
  get dynamic(): ElfDynamicInfo | null {
    if (this.#dynamic === undefined) this.#dynamic = this.#readDynamic();
    return this.#dynamic;
  }

  #readDynamic(): ElfDynamicInfo | null {
    const ph = this.programHeaders.find((p) => p.type === C.PT_DYNAMIC);
    let data: Uint8Array;
    if (ph) data = this.segmentData(ph);
    else {
      const s = this.sections.find((q) => q.type === C.SHT_DYNAMIC);
      if (!s) return null;
      data = this.sectionData(s);
    }
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const entries: ElfDynamicEntry[] = [];
    const n = Math.floor(data.length / DYN_SIZE);
    for (let i = 0; i < n; i++) {
      const tag = Number(dv.getBigInt64(i * DYN_SIZE, true));
      if (tag === C.DT_NULL) break;
      entries.push({ tag, value: dv.getBigUint64(i * DYN_SIZE + 8, true) });
    }
    const first = new Map<number, bigint>();
    for (const e of entries) if (!first.has(e.tag)) first.set(e.tag, e.value);
    const g = (t: number) => first.get(t);
    const flags = Number((g(C.DT_FLAGS) ?? 0n) & 0xffffffffn);
    const flags1 = Number((g(C.DT_FLAGS_1) ?? 0n) & 0xffffffffn);
    const pltrel = g(C.DT_PLTREL);
    const info: ElfDynamicInfo = {
      entries,
      needed: [],
      flags,
      flags1,
      bindNow: (flags & C.DF_BIND_NOW) !== 0 || (flags1 & C.DF_1_NOW) !== 0 || first.has(C.DT_BIND_NOW),
      get: g,
      pltgot: g(C.DT_PLTGOT),
      jmprel: g(C.DT_JMPREL),
      pltrelsz: g(C.DT_PLTRELSZ),
      pltrel: pltrel === undefined ? undefined : Number(pltrel & 0xffffffffn),
      rela: g(C.DT_RELA),
      relasz: g(C.DT_RELASZ),
      rel: g(C.DT_REL),
      relsz: g(C.DT_RELSZ),
      relr: g(C.DT_RELR),
      relrsz: g(C.DT_RELRSZ),
      symtab: g(C.DT_SYMTAB),
      strtab: g(C.DT_STRTAB),
      strsz: g(C.DT_STRSZ),
      hash: g(C.DT_HASH),
      gnuHash: g(C.DT_GNU_HASH),
      versym: g(C.DT_VERSYM),
      verdef: g(C.DT_VERDEF),
      verneed: g(C.DT_VERNEED),
      init: g(C.DT_INIT),
      fini: g(C.DT_FINI),
      initArray: g(C.DT_INIT_ARRAY),
      initArraySize: g(C.DT_INIT_ARRAYSZ),
      finiArray: g(C.DT_FINI_ARRAY),
      finiArraySize: g(C.DT_FINI_ARRAYSZ),
      preinitArray: g(C.DT_PREINIT_ARRAY),
      preinitArraySize: g(C.DT_PREINIT_ARRAYSZ),
      textrel: first.has(C.DT_TEXTREL) || (flags & C.DF_TEXTREL) !== 0,
    };
    for (const k of Object.keys(info) as (keyof ElfDynamicInfo)[]) if (info[k] === undefined) delete info[k];
    const hasStrings = entries.some((e) => e.tag === C.DT_NEEDED || e.tag === C.DT_SONAME || e.tag === C.DT_RPATH || e.tag === C.DT_RUNPATH);
    if (hasStrings) {
      const strtab = this.#dynamicStrings(info);
      if (!strtab) this.#r.fail(ElfErrorCode.BAD_STRUCTURE, 'dynamic section names libraries but has no DT_STRTAB');
      const str = (v: bigint) => {
        if (v >= BigInt(strtab.size)) this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `dynamic string offset ${v} is outside the dynamic string table`);
        return strtab.get(Number(v));
      };
      for (const e of entries) {
        if (e.tag === C.DT_NEEDED) info.needed.push(str(e.value));
        else if (e.tag === C.DT_SONAME && info.soname === undefined) info.soname = str(e.value);
        else if (e.tag === C.DT_RPATH && info.rpath === undefined) info.rpath = str(e.value);
        else if (e.tag === C.DT_RUNPATH && info.runpath === undefined) info.runpath = str(e.value);
      }
    }
    return info;
  }

  /** The dynamic string table: DT_STRTAB/DT_STRSZ, else the string table linked from SHT_DYNAMIC. */
  #dynamicStrings(dyn: ElfDynamicInfo): StringTable | null {
    if (this.#dynstr !== undefined) return this.#dynstr;
    let t: StringTable | null = null;
    if (dyn.strtab !== undefined && this.#loads.length > 0) {
      let size = dyn.strsz;
      if (size === undefined) size = BigInt(this.#fileOffsetOfVaddr(dyn.strtab, 'DT_STRTAB').available);
      t = new StringTable(this.#fileBytesAtVaddr(dyn.strtab, size, 'DT_STRTAB'), 'the dynamic string table', this.#r.label);
    } else {
      const s = this.sections.find((q) => q.type === C.SHT_DYNAMIC);
      if (s) t = this.#stringSection(s.link, s.name);
    }
    this.#dynstr = t;
    return t;
  }

  // ---------------------------------------------------------------- relocations

  /** Every SHT_RELA / SHT_REL section with its entries (incl. --emit-relocs sections). Lazy. */
  get relocationSections(): readonly ElfRelocationSection[] {
    if (!this.#relocSections) {
      const out: ElfRelocationSection[] = [];
      // Relocation sections do not overlap, so together they fit in the file; hostile ones all
      // pointing at the same bytes would otherwise decode the file thousands of times.
      let total = 0n;
      for (const s of this.sections) if (s.type === C.SHT_RELA || s.type === C.SHT_REL) total += s.size;
      if (total > BigInt(this.bytes.length)) {
        this.#r.fail(ElfErrorCode.BAD_STRUCTURE, 'relocation sections together are larger than the file (they overlap)');
      }
      for (const s of this.sections) {
        if (s.type !== C.SHT_RELA && s.type !== C.SHT_REL) continue;
        const rela = s.type === C.SHT_RELA;
        const entsize = rela ? RELA_SIZE : REL_SIZE;
        if (s.entsize !== BigInt(entsize)) {
          this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `relocation section ${s.name} has entry size ${s.entsize}, expected ${entsize}`);
        }
        let table: readonly ElfSymbol[] = [];
        if (s.link !== 0) {
          const ls = this.#sectionAt(s.link, `relocation section ${s.name}`);
          if (ls.type === C.SHT_SYMTAB) table = this.symbols;
          else if (ls.type === C.SHT_DYNSYM) table = this.dynamicSymbols;
          else this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `relocation section ${s.name} links ${ls.name}, which is not a symbol table`);
        }
        const entry: ElfRelocationSection = {
          section: s,
          rela,
          relocations: this.#decodeRelocations(this.sectionData(s), rela, table, s.name),
        };
        if (s.info !== 0 && s.info < this.sections.length && ((s.flags & C.SHF_INFO_LINK) !== 0 || !(s.flags & C.SHF_ALLOC))) {
          entry.target = this.sections[s.info]!;
        }
        out.push(entry);
      }
      this.#relocSections = out;
    }
    return this.#relocSections;
  }

  /** The relocation section called `name` (e.g. ".rela.text"), or undefined. */
  findRelocationSection(name: string): ElfRelocationSection | undefined {
    return this.relocationSections.find((r) => r.section.name === name);
  }

  /**
   * Dynamic relocations as the dynamic linker finds them (DT_RELA, DT_REL, DT_JMPREL, DT_RELR),
   * which works when section headers are stripped. Lazy; throws ElfError when broken.
   */
  get dynamicRelocations(): ElfDynamicRelocations {
    if (!this.#dynRelocs) {
      const out: ElfDynamicRelocations = { rela: [], rel: [], plt: [], relr: [] };
      const dyn = this.dynamic;
      if (dyn) {
        const syms = dyn.symtab !== undefined || this.sections.some((s) => s.type === C.SHT_DYNSYM) ? this.dynamicSymbols : [];
        const read = (addr: bigint | undefined, size: bigint | undefined, rela: boolean, what: string) =>
          addr === undefined || !size ? [] : this.#decodeRelocations(this.#fileBytesAtVaddr(addr, size, what), rela, syms, what);
        const relaent = dyn.get(C.DT_RELAENT);
        if (relaent !== undefined && relaent !== BigInt(RELA_SIZE)) this.#r.fail(ElfErrorCode.BAD_STRUCTURE, `DT_RELAENT is ${relaent}`);
        out.rela = read(dyn.rela, dyn.relasz, true, 'DT_RELA');
        out.rel = read(dyn.rel, dyn.relsz, false, 'DT_REL');
        out.plt = read(dyn.jmprel, dyn.pltrelsz, dyn.pltrel !== C.DT_REL, 'DT_JMPREL');
        if (dyn.relr !== undefined && dyn.relrsz) out.relr = this.#decodeRelr(this.#fileBytesAtVaddr(dyn.relr, dyn.relrsz, 'DT_RELR'));
      }
      this.#dynRelocs = out;
    }
    return this.#dynRelocs;
  }

  #decodeRelocations(data: Uint8Array, rela: boolean, syms: readonly ElfSymbol[], what: string): ElfRelocation[] {
    const size = rela ? RELA_SIZE : REL_SIZE;
    const n = Math.floor(data.length / size);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const out: ElfRelocation[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const o = i * size;
      // r_info = (sym << 32) | type: read as two 32-bit halves to keep bigint out of the loop.
      const type = dv.getUint32(o + 8, true);
      const symbolIndex = dv.getUint32(o + 12, true);
      const rel: ElfRelocation = {
        offset: dv.getBigUint64(o, true),
        type,
        symbolIndex,
        addend: rela ? dv.getBigInt64(o + 16, true) : 0n,
      };
      if (symbolIndex !== 0) {
        const s = syms[symbolIndex];
        if (!s) this.#r.fail(ElfErrorCode.OUT_OF_RANGE, `${what}: relocation ${i} names symbol ${symbolIndex}, beyond the ${syms.length} symbols of its table`);
        rel.symbol = s;
      }
      out[i] = rel;
    }
    return out;
  }

  #decodeRelr(data: Uint8Array): bigint[] {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const out: bigint[] = [];
    let where = 0n;
    const n = Math.floor(data.length / 8);
    for (let i = 0; i < n; i++) {
      const e = dv.getBigUint64(i * 8, true);
      if ((e & 1n) === 0n) {
        out.push(e);
        where = e + 8n;
      } else {
        // Bitmap: bit k (k >= 1) relocates where + (k-1)*8; each bitmap covers 63 words.
        let bits = e >> 1n;
        for (let k = 0n; bits !== 0n; k++, bits >>= 1n) if ((bits & 1n) !== 0n) out.push(where + k * 8n);
        where += 63n * 8n;
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- notes

  /** Notes of every SHT_NOTE section and PT_NOTE segment (each note once). Lazy. */
  get notes(): readonly ElfNote[] {
    if (!this.#notes) {
      const out: ElfNote[] = [];
      const seen = new Set<bigint>();
      const regions = new Map<string, { offset: bigint; size: bigint; align: number }>();
      const add = (offset: bigint, size: bigint, align: bigint) => {
        const a = align === 8n ? 8 : 4;
        const key = `${offset}:${size}:${a}`;
        if (!regions.has(key)) regions.set(key, { offset, size, align: a });
      };
      for (const s of this.sections) if (s.type === C.SHT_NOTE) add(s.offset, s.size, s.addralign);
      for (const p of this.programHeaders) if (p.type === C.PT_NOTE) add(p.offset, p.filesz, p.align);
      // Sections and segments cover each note about twice; many overlapping regions are hostile.
      let budget = (this.bytes.length >> 2) + 1024;
      for (const reg of regions.values()) {
        const notes = this.#readNotes(reg.offset, reg.size, reg.align);
        budget -= notes.length + 1;
        if (budget < 0) this.#r.fail(ElfErrorCode.BAD_STRUCTURE, 'note regions overlap far more than sections and segments do');
        for (const n of notes) {
          if (seen.has(n.offset)) continue;
          seen.add(n.offset);
          out.push(n);
        }
      }
      this.#notes = out;
    }
    return this.#notes;
  }

  #readNotes(offset: bigint, size: bigint, align: number): ElfNote[] {
    const r = this.#r;
    const start = r.range(offset, size, 'note region');
    const end = start + Number(size);
    const pad = (n: number) => (n + align - 1) & ~(align - 1);
    const out: ElfNote[] = [];
    let o = start;
    while (o + 12 <= end) {
      const namesz = r.u32(o);
      const descsz = r.u32(o + 4);
      const type = r.u32(o + 8);
      const nameAt = o + 12;
      // Padding is relative to the note start (matters for 8-aligned .note.gnu.property).
      const descAt = o + pad(12 + namesz);
      const next = descAt + pad(descsz);
      if (namesz > end - nameAt || descsz > end - nameAt || descAt + descsz > end) r.fail(ElfErrorCode.OUT_OF_RANGE, `note at offset ${o} runs past its region`);
      let nameEnd = nameAt + namesz;
      while (nameEnd > nameAt && this.bytes[nameEnd - 1] === 0) nameEnd--;
      const name = new TextDecoder().decode(this.bytes.subarray(nameAt, nameEnd));
      out.push({ name, type, desc: this.bytes.subarray(descAt, descAt + descsz), offset: BigInt(o) });
      o = next;
    }
    return out;
  }

  /** The GNU build-id (NT_GNU_BUILD_ID) as lowercase hex, or null. */
  get buildId(): string | null {
    const n = this.notes.find((q) => q.name === 'GNU' && q.type === C.NT_GNU_BUILD_ID);
    if (!n) return null;
    let s = '';
    for (const b of n.desc) s += b.toString(16).padStart(2, '0');
    return s;
  }
}

function readHeader(r: ByteReader, options: ElfParseOptions): ElfHeader {
  if (r.length < C.EI_NIDENT) r.fail(ElfErrorCode.TRUNCATED, `file of ${r.length} bytes is too short for an ELF identification`);
  for (let i = 0; i < 4; i++) if (r.u8At(i) !== C.ELFMAG[i]) r.fail(ElfErrorCode.BAD_MAGIC, 'not an ELF file (bad magic)');
  const cls = r.u8At(C.EI_CLASS);
  const data = r.u8At(C.EI_DATA);
  if (cls !== C.ELFCLASS64) r.fail(ElfErrorCode.UNSUPPORTED, `ELF class ${cls === C.ELFCLASS32 ? 'ELFCLASS32 (32-bit)' : cls} is not supported; only 64-bit x86-64 ELF files are`);
  if (data !== C.ELFDATA2LSB) r.fail(ElfErrorCode.UNSUPPORTED, `ELF data encoding ${data === C.ELFDATA2MSB ? 'big-endian' : data} is not supported; only little-endian x86-64 ELF files are`);
  if (r.length < EHDR_SIZE) r.fail(ElfErrorCode.TRUNCATED, `file of ${r.length} bytes is too short for an ELF64 header`);
  const machine = r.u16(18);
  if (machine !== C.EM_X86_64 && !options.allowAnyMachine) {
    r.fail(ElfErrorCode.UNSUPPORTED, `ELF machine is ${C.machineName(machine)}; only x86-64 is supported`);
  }
  const h: ElfHeader = {
    class: cls,
    data,
    osabi: r.u8At(C.EI_OSABI),
    abiVersion: r.u8At(C.EI_ABIVERSION),
    type: r.u16(16),
    machine,
    version: r.u32(20),
    entry: r.u64(24),
    phoff: r.u64(32),
    shoff: r.u64(40),
    flags: r.u32(48),
    ehsize: r.u16(52),
    phentsize: r.u16(54),
    phnum: r.u16(56),
    shentsize: r.u16(58),
    shnum: r.u16(60),
    shstrndx: r.u16(62),
  };
  // gABI extended numbering: counts that do not fit live in section header 0.
  const needSection0 =
    h.shoff !== 0n &&
    (options.sectionHeaders !== false || h.shoff + BigInt(SHDR_SIZE) <= BigInt(r.length)) &&
    (h.shnum === 0 || h.shstrndx === C.SHN_XINDEX || h.phnum === C.PN_XNUM);
  if (needSection0) {
    if (h.shentsize < SHDR_SIZE) r.fail(ElfErrorCode.BAD_STRUCTURE, `e_shentsize is ${h.shentsize}, expected ${SHDR_SIZE}`);
    const o = r.range(h.shoff, BigInt(SHDR_SIZE), 'section header 0', ElfErrorCode.TRUNCATED);
    if (h.shnum === 0) {
      const n = r.u64(o + 32);
      if (n > BigInt(r.length)) r.fail(ElfErrorCode.OUT_OF_RANGE, `section count ${n} from section 0 exceeds the file size`);
      h.shnum = Number(n);
    }
    if (h.shstrndx === C.SHN_XINDEX) h.shstrndx = r.u32(o + 40);
    if (h.phnum === C.PN_XNUM) h.phnum = r.u32(o + 44);
  }
  return h;
}

function readProgramHeaders(r: ByteReader, h: ElfHeader): ElfProgramHeader[] {
  if (h.phnum === 0 || h.phoff === 0n) return [];
  if (h.phentsize < PHDR_SIZE) r.fail(ElfErrorCode.BAD_STRUCTURE, `e_phentsize is ${h.phentsize}, expected ${PHDR_SIZE}`);
  const base = r.range(h.phoff, BigInt(h.phnum) * BigInt(h.phentsize), 'program header table', ElfErrorCode.TRUNCATED);
  const out: ElfProgramHeader[] = new Array(h.phnum);
  for (let i = 0; i < h.phnum; i++) {
    const o = base + i * h.phentsize;
    out[i] = {
      index: i,
      type: r.u32(o),
      flags: r.u32(o + 4),
      offset: r.u64(o + 8),
      vaddr: r.u64(o + 16),
      paddr: r.u64(o + 24),
      filesz: r.u64(o + 32),
      memsz: r.u64(o + 40),
      align: r.u64(o + 48),
    };
  }
  return out;
}

function readSections(r: ByteReader, h: ElfHeader): ElfSection[] {
  if (h.shoff === 0n || h.shnum === 0) return [];
  if (h.shentsize < SHDR_SIZE) r.fail(ElfErrorCode.BAD_STRUCTURE, `e_shentsize is ${h.shentsize}, expected ${SHDR_SIZE}`);
  const base = r.range(h.shoff, BigInt(h.shnum) * BigInt(h.shentsize), 'section header table', ElfErrorCode.TRUNCATED);
  const out: ElfSection[] = new Array(h.shnum);
  const nameOffsets: number[] = new Array(h.shnum);
  for (let i = 0; i < h.shnum; i++) {
    const o = base + i * h.shentsize;
    nameOffsets[i] = r.u32(o);
    out[i] = {
      index: i,
      name: '',
      type: r.u32(o + 4),
      flags: Number(r.u64(o + 8)),
      addr: r.u64(o + 16),
      offset: r.u64(o + 24),
      size: r.u64(o + 32),
      link: r.u32(o + 40),
      info: r.u32(o + 44),
      addralign: r.u64(o + 48),
      entsize: r.u64(o + 56),
    };
  }
  if (h.shstrndx !== C.SHN_UNDEF) {
    const ss = out[h.shstrndx];
    if (!ss) r.fail(ElfErrorCode.BAD_STRUCTURE, `e_shstrndx ${h.shstrndx} names no section (${h.shnum} sections)`);
    if (ss.type !== C.SHT_STRTAB) r.fail(ElfErrorCode.BAD_STRUCTURE, `e_shstrndx ${h.shstrndx} is not a string table`);
    const off = r.range(ss.offset, ss.size, 'section name string table');
    const names = new StringTable(r.u8.subarray(off, off + Number(ss.size)), 'the section name string table', r.label);
    for (let i = 0; i < h.shnum; i++) out[i]!.name = names.get(nameOffsets[i]!);
  }
  return out;
}
