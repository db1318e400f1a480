/**
 * A minimal ELF64 little-endian writer for symbol files: an ET_EXEC with sections only (no program
 * headers: a debugger reads such a file for its symbols and unwind tables, never loads it).
 *
 * Layout (System V gABI, "ELF Header", "Sections", "Symbol Table"; x86-64 psABI for EM_X86_64):
 *   0                 Elf64_Ehdr (64 bytes)
 *   64 ...            section contents, each at its sh_addralign (the caller's sections, then
 *                     .symtab (align 8), .strtab, .shstrtab)
 *   aligned to 8      section header table: e_shnum × Elf64_Shdr (64 bytes), index 0 all zero
 * Symbols: index 0 is the null symbol; every symbol written is STB_GLOBAL, so .symtab's sh_info
 * (one past the last local) is 1.
 */

/** e_ident and header constants (gABI). */
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EV_CURRENT = 1;
const ELFOSABI_NONE = 0;
const ET_EXEC = 2;
const EM_X86_64 = 62;
const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const SYM_SIZE = 24;

export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_NOBITS = 8;
export const SHF_WRITE = 0x1;
export const SHF_ALLOC = 0x2;
export const SHF_EXECINSTR = 0x4;
export const STB_GLOBAL = 1;
export const STT_FUNC = 2;

/** A section the caller provides (the writer adds .symtab, .strtab and .shstrtab). */
export interface WriterSection {
  name: string;
  type: typeof SHT_PROGBITS | typeof SHT_NOBITS;
  flags: number;
  /** Run-time address (sh_addr). */
  addr: bigint;
  /** Contents (PROGBITS) ; for NOBITS only its length counts (sh_size). */
  bytes: Uint8Array;
  align: number;
}

/** A symbol: `section` is an index into the caller's section list. */
export interface WriterSymbol {
  name: string;
  value: bigint;
  size: bigint;
  type: typeof STT_FUNC;
  section: number;
}

/** A string table under construction: "\0" first, each distinct string once. */
class StringTable {
  readonly #parts: Uint8Array[] = [new Uint8Array(1)];
  readonly #at = new Map<string, number>();
  #size = 1;
  add(s: string): number {
    if (s === '') return 0;
    const known = this.#at.get(s);
    if (known !== undefined) return known;
    const b = new TextEncoder().encode(`${s}\0`);
    const at = this.#size;
    this.#parts.push(b);
    this.#at.set(s, at);
    this.#size += b.length;
    return at;
  }
  bytes(): Uint8Array {
    return concat(this.#parts);
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

interface Placed {
  nameAt: number;
  type: number;
  flags: number;
  addr: bigint;
  offset: number;
  size: number;
  link: number;
  info: number;
  align: number;
  entsize: number;
}

/** Writes an ELF64 x86-64 file holding `sections` and a `.symtab` of `symbols`. */
export function writeElf(sections: readonly WriterSection[], symbols: readonly WriterSymbol[]): Uint8Array {
  for (const s of symbols) {
    if (!Number.isInteger(s.section) || s.section < 0 || s.section >= sections.length) throw new RangeError(`symbol ${s.name}: section index ${s.section} out of range`);
  }
  const shstr = new StringTable();
  const str = new StringTable();
  // Section header indexes: 0 null, 1..n the caller's, then .symtab (n+1), .strtab, .shstrtab.
  const strtabIndex = sections.length + 2;
  const shstrtabIndex = sections.length + 3;

  const sym = new Uint8Array(SYM_SIZE * (symbols.length + 1));
  const sv = new DataView(sym.buffer);
  symbols.forEach((s, i) => {
    const o = SYM_SIZE * (i + 1);
    sv.setUint32(o, str.add(s.name), true); // st_name
    sv.setUint8(o + 4, (STB_GLOBAL << 4) | s.type); // st_info
    sv.setUint8(o + 5, 0); // st_other: STV_DEFAULT
    sv.setUint16(o + 6, s.section + 1, true); // st_shndx
    sv.setBigUint64(o + 8, s.value, true);
    sv.setBigUint64(o + 16, s.size, true);
  });
  const strBytes = str.bytes();

  const contents: { bytes: Uint8Array; offset: number }[] = [];
  const placed: Placed[] = [];
  let offset = EHDR_SIZE;
  const place = (p: Omit<Placed, 'offset' | 'size'>, bytes: Uint8Array, nobits = false): void => {
    offset = alignUp(offset, Math.max(1, p.align));
    placed.push({ ...p, offset, size: bytes.length });
    if (!nobits) {
      contents.push({ bytes, offset });
      offset += bytes.length;
    }
  };
  for (const s of sections) {
    place({ nameAt: shstr.add(s.name), type: s.type, flags: s.flags, addr: s.addr, link: 0, info: 0, align: s.align, entsize: 0 }, s.bytes, s.type === SHT_NOBITS);
  }
  place({ nameAt: shstr.add('.symtab'), type: SHT_SYMTAB, flags: 0, addr: 0n, link: strtabIndex, info: 1, align: 8, entsize: SYM_SIZE }, sym);
  place({ nameAt: shstr.add('.strtab'), type: SHT_STRTAB, flags: 0, addr: 0n, link: 0, info: 0, align: 1, entsize: 0 }, strBytes);
  const shstrNameAt = shstr.add('.shstrtab');
  const shstrBytes = shstr.bytes();
  place({ nameAt: shstrNameAt, type: SHT_STRTAB, flags: 0, addr: 0n, link: 0, info: 0, align: 1, entsize: 0 }, shstrBytes);

  const shoff = alignUp(offset, 8);
  const shnum = placed.length + 1;
  const out = new Uint8Array(shoff + SHDR_SIZE * shnum);
  const dv = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE]); // e_ident
  dv.setUint16(16, ET_EXEC, true);
  dv.setUint16(18, EM_X86_64, true);
  dv.setUint32(20, EV_CURRENT, true);
  dv.setBigUint64(24, 0n, true); // e_entry
  dv.setBigUint64(32, 0n, true); // e_phoff: no program headers
  dv.setBigUint64(40, BigInt(shoff), true);
  dv.setUint32(48, 0, true); // e_flags
  dv.setUint16(52, EHDR_SIZE, true);
  dv.setUint16(54, 56, true); // e_phentsize (Elf64_Phdr), with e_phnum 0
  dv.setUint16(56, 0, true);
  dv.setUint16(58, SHDR_SIZE, true);
  dv.setUint16(60, shnum, true);
  dv.setUint16(62, shstrtabIndex, true);
  for (const c of contents) out.set(c.bytes, c.offset);
  placed.forEach((p, i) => {
    const o = shoff + SHDR_SIZE * (i + 1);
    dv.setUint32(o, p.nameAt, true);
    dv.setUint32(o + 4, p.type, true);
    dv.setBigUint64(o + 8, BigInt(p.flags), true);
    dv.setBigUint64(o + 16, p.addr, true);
    dv.setBigUint64(o + 24, BigInt(p.offset), true);
    dv.setBigUint64(o + 32, BigInt(p.size), true);
    dv.setUint32(o + 40, p.link, true);
    dv.setUint32(o + 44, p.info, true);
    dv.setBigUint64(o + 48, BigInt(p.align), true);
    dv.setBigUint64(o + 56, BigInt(p.entsize), true);
  });
  return out;
}
