/**
 * Module images: a module's file, parsed once and shared by every process that maps the same
 * inode (cache key: dev, inode, size, mtime, ctime of the mapped file as opened through
 * /proc/PID/map_files). Derived tables the checks need are computed lazily and cached with it.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import {
  DF_SYMBOLIC,
  PT_DYNAMIC,
  PT_GNU_RELRO,
  SHF_EXECINSTR,
  SHN_UNDEF,
  STB_GLOBAL,
  STB_GNU_UNIQUE,
  STB_WEAK,
  STT_FUNC,
  STT_TLS,
  STV_DEFAULT,
  STV_PROTECTED,
  parseElf,
  type ElfFile,
  type ElfSection,
  type ElfSymbol,
} from '../elf/index.js';
import { statKey } from './identity.js';

/** A half-open range of link-time vaddrs. */
export interface VaddrRange {
  start: bigint;
  end: bigint;
}

/** Names of the sections that make up the export table (structure 4). */
export const EXPORT_SECTIONS: readonly string[] = ['.dynsym', '.dynstr', '.gnu.hash', '.hash', '.gnu.version', '.gnu.version_d', '.gnu.version_r'];

/** Pseudo relocation type for a DT_RELR word (bias added to the word in the file). */
export const RELR_WORD = -1;

/** A relocated word: its vaddr, type (R_X86_64_* or RELR_WORD) and addend (RELR: the file's word). */
export interface RelocationWord {
  vaddr: bigint;
  type: number;
  addend: bigint;
  symbol?: ElfSymbol;
}

/** A module file parsed for verification. */
export class ModuleImage {
  readonly elf: ElfFile;
  readonly key: string;
  readonly size: number;
  #exports: Map<string, ElfSymbol[]> | undefined;
  #relro: VaddrRange[] | undefined;
  #exportRanges: VaddrRange[] | undefined;
  #sectionsByVaddr: ElfSection[] | undefined;
  #relocWords: RelocationWord[] | undefined;

  constructor(elf: ElfFile, key: string) {
    this.elf = elf;
    this.key = key;
    this.size = elf.bytes.byteLength;
  }

  /**
   * Bytes of the file at `offset` (zero-filled beyond the end, as a mapping shows them). A view
   * into the file when the range lies inside it: callers must copy before changing it.
   */
  fileBytes(offset: bigint, length: number): Uint8Array {
    if (offset >= 0n && offset + BigInt(length) <= BigInt(this.size)) return this.elf.bytes.subarray(Number(offset), Number(offset) + length);
    const out = new Uint8Array(length);
    if (offset < BigInt(this.size)) {
      const o = Number(offset);
      out.set(this.elf.bytes.subarray(o, Math.min(this.size, o + length)));
    }
    return out;
  }

  /** PT_GNU_RELRO ranges (vaddrs), page-rounded down at the end as the loader mprotects them. */
  get relro(): VaddrRange[] {
    if (!this.#relro) {
      this.#relro = this.elf.programHeaders
        .filter((p) => p.type === PT_GNU_RELRO)
        .map((p) => ({ start: p.vaddr, end: (p.vaddr + p.memsz) & ~0xfffn }));
    }
    return this.#relro;
  }

  /** Every dynamic relocation (and DT_RELR word) sorted by vaddr. */
  get relocationWords(): RelocationWord[] {
    if (!this.#relocWords) {
      const r = this.elf.dynamicRelocations;
      const out: RelocationWord[] = [];
      for (const x of [r.rela, r.rel, r.plt]) {
        for (const e of x) out.push(e.symbol !== undefined ? { vaddr: e.offset, type: e.type, addend: e.addend, symbol: e.symbol } : { vaddr: e.offset, type: e.type, addend: e.addend });
      }
      for (const v of r.relr) {
        const off = this.elf.vaddrToOffset(v);
        if (off === undefined) continue;
        const b = this.fileBytes(off, 8);
        out.push({ vaddr: v, type: RELR_WORD, addend: new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true) });
      }
      out.sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
      this.#relocWords = out;
    }
    return this.#relocWords;
  }

  /** Relocated words with start <= vaddr < end (binary search). */
  relocationWordsIn(start: bigint, end: bigint): RelocationWord[] {
    const all = this.relocationWords;
    let lo = 0;
    let hi = all.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (all[mid]!.vaddr < start) lo = mid + 1;
      else hi = mid;
    }
    const out: RelocationWord[] = [];
    for (let i = lo; i < all.length && all[i]!.vaddr < end; i++) out.push(all[i]!);
    return out;
  }

  /** Vaddr ranges of the export table sections. */
  get exportRanges(): VaddrRange[] {
    if (!this.#exportRanges) {
      this.#exportRanges = this.elf.sections
        .filter((s) => EXPORT_SECTIONS.includes(s.name) && s.addr !== 0n)
        .map((s) => ({ start: s.addr, end: s.addr + s.size }));
    }
    return this.#exportRanges;
  }

  /** The allocated section containing `vaddr`. */
  sectionAt(vaddr: bigint): ElfSection | undefined {
    if (!this.#sectionsByVaddr) {
      this.#sectionsByVaddr = this.elf.sections.filter((s) => s.addr !== 0n && s.size > 0n).sort((a, b) => (a.addr < b.addr ? -1 : 1));
    }
    for (const s of this.#sectionsByVaddr) if (vaddr >= s.addr && vaddr < s.addr + s.size) return s;
    return undefined;
  }

  /** True when `vaddr` lies in an executable section (or, without sections, in an executable segment). */
  isCode(vaddr: bigint): boolean {
    const s = this.sectionAt(vaddr);
    if (s !== undefined) return (s.flags & SHF_EXECINSTR) !== 0;
    const seg = this.elf.findLoadSegment(vaddr);
    return seg !== undefined && (seg.flags & 1) !== 0;
  }

  /** Vaddr of the dynamic section (PT_DYNAMIC), if any. */
  get dynamicVaddr(): bigint | undefined {
    return this.elf.programHeaders.find((p) => p.type === PT_DYNAMIC)?.vaddr;
  }

  /** DT_SYMBOLIC / DF_SYMBOLIC: the module's own definitions come first for its references. */
  get symbolic(): boolean {
    const d = this.elf.dynamic;
    return d !== null && (d.get(16) !== undefined || (d.flags & DF_SYMBOLIC) !== 0);
  }

  /**
   * Exported definitions by name, as the dynamic linker may bind to them: defined .dynsym symbols
   * with global, weak or unique binding and default or protected visibility, and undefined function
   * symbols with a value (the canonical PLT entry of an executable that takes a function's address:
   * glibc binds non-PLT references there, for pointer equality). Symbols with value 0 never bind.
   */
  exportsNamed(name: string): ElfSymbol[] {
    if (!this.#exports) {
      const m = new Map<string, ElfSymbol[]>();
      for (const s of this.elf.dynamicSymbols) {
        if (s.name === '' || s.type === STT_TLS || s.value === 0n) continue;
        if (s.shndx === SHN_UNDEF && s.type !== STT_FUNC) continue;
        if (s.bind !== STB_GLOBAL && s.bind !== STB_WEAK && s.bind !== STB_GNU_UNIQUE) continue;
        if (s.visibility !== STV_DEFAULT && s.visibility !== STV_PROTECTED) continue;
        const l = m.get(s.name);
        if (l) l.push(s);
        else m.set(s.name, [s]);
      }
      this.#exports = m;
    }
    return this.#exports.get(name) ?? [];
  }

  /** "name+0xOFF" of the symbol containing (or nearest before) `vaddr`, or null. */
  symbolize(vaddr: bigint): string | null {
    try {
      const hit = this.elf.findSymbolByAddress(vaddr);
      if (hit === undefined) return null;
      if (!hit.contains && hit.offset > 0x10000n) return null;
      return hit.offset === 0n ? hit.symbol.name : `${hit.symbol.name}+0x${hit.offset.toString(16)}`;
    } catch {
      return null;
    }
  }
}

function readWhole(fd: number, size: number): Uint8Array {
  const buf = new Uint8Array(size);
  let done = 0;
  while (done < size) {
    const n = readSync(fd, buf, done, size - done, done);
    if (n <= 0) break;
    done += n;
  }
  return done === size ? buf : buf.subarray(0, done);
}

/**
 * Largest module file read and parsed whole (1 GiB). A bigger file (a 64 GiB sparse file mapped to
 * blind the verifier, say) is not read: its module is reported unverifiable, alone.
 */
export const IMAGE_MAX_BYTES = 1 << 30;

/**
 * LRU cache of parsed module files bounded by total file size. Files are opened by path (use the
 * /proc/PID/map_files path so the mapped inode is read, not whatever the name points to now).
 */
export class ImageCache {
  private readonly entries = new Map<string, ModuleImage | null>();
  private total = 0;
  /** Bytes of files read from disk (metrics). */
  bytesRead = 0;
  /** Why the last `load` returned null (undefined when it returned an image). */
  lastProblem: string | undefined;

  constructor(private readonly budget = 512 * 1024 * 1024) {}

  /** The parsed image of the file at `path`, or null when it is not a readable ELF file. */
  load(path: string, name = path): ModuleImage | null {
    this.lastProblem = undefined;
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      this.lastProblem = `cannot open it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
      return null;
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) {
        this.lastProblem = 'it is not a regular file';
        return null;
      }
      if (st.size > IMAGE_MAX_BYTES) {
        this.lastProblem = `the file is ${st.size} bytes (${st.blocks * 512} allocated), more than the ${IMAGE_MAX_BYTES} bytes the verifier reads whole`;
        return null;
      }
      const key = statKey(st);
      if (this.entries.has(key)) {
        const hit = this.entries.get(key)!;
        // Refresh LRU position.
        this.entries.delete(key);
        this.entries.set(key, hit);
        if (hit === null) this.lastProblem = 'it is not a parseable ELF file';
        return hit;
      }
      const bytes = readWhole(fd, st.size);
      this.bytesRead += bytes.byteLength;
      let image: ModuleImage | null;
      try {
        image = new ModuleImage(parseElf(bytes, { name }), key);
      } catch (e) {
        this.lastProblem = `it is not a parseable ELF file (${(e as Error).message})`;
        image = null;
      }
      this.entries.set(key, image);
      this.total += image?.size ?? 0;
      while (this.total > this.budget && this.entries.size > 1) {
        const [oldKey, old] = this.entries.entries().next().value as [string, ModuleImage | null];
        this.entries.delete(oldKey);
        this.total -= old?.size ?? 0;
      }
      return image;
    } finally {
      closeSync(fd);
    }
  }
}
