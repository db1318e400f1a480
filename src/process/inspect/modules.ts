/**
 * Groups the mappings of a process into ELF modules and computes each module's load bias from
 * the file's program headers. File headers are read through /proc/PID/map_files so a deleted or
 * replaced file still resolves to the inode that is really mapped.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { basename } from 'node:path';
import { ElfError } from '../../errors.js';
import { DT_NULL, DT_SONAME, DT_STRSZ, DT_STRTAB, PT_DYNAMIC, PT_LOAD, PT_NOTE, parseElf, type ElfFile, type ElfProgramHeader } from '../../elf/index.js';
import type { Auxv, Mapping } from './procfs.js';
import { readFileRange } from './memory.js';

/** What the inspector keeps of a mapped ELF image: its headers, not its bytes. */
export interface ElfImageSummary {
  /** e_type: 2 ET_EXEC, 3 ET_DYN. */
  type: number;
  /** e_entry (link-time vaddr). */
  entry: bigint;
  programHeaders: readonly ElfProgramHeader[];
  /** GNU build-id as lower-case hex, if present. */
  buildId?: string;
}

function summaryOf(elf: ElfFile): ElfImageSummary {
  const s: ElfImageSummary = { type: elf.header.type, entry: elf.header.entry, programHeaders: elf.programHeaders };
  const id = elf.buildId;
  if (id !== null) s.buildId = id;
  return s;
}

function isElfMagic(b: Uint8Array): boolean {
  return b.byteLength >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

/** e_shoff, e_shnum and e_shstrndx offsets in Elf64_Ehdr. */
const E_SHOFF = 40;
const E_SHNUM = 60;
const E_SHSTRNDX = 62;

/**
 * Parses only the headers of an ELF file from a prefix of it: the section header table lives at
 * the end of the file, so it is blanked in a copy of the prefix and parseElf sees a file with
 * program headers and notes only. Returns undefined when the prefix is not a parseable ELF.
 */
function parseElfHeaders(prefix: Uint8Array, name: string): ElfFile | undefined {
  const copy = new Uint8Array(prefix);
  if (copy.byteLength < 64) return undefined;
  const dv = new DataView(copy.buffer);
  dv.setBigUint64(E_SHOFF, 0n, true);
  dv.setUint16(E_SHNUM, 0, true);
  dv.setUint16(E_SHSTRNDX, 0, true);
  try {
    return parseElf(copy, { name });
  } catch (e) {
    if (e instanceof ElfError) return undefined;
    throw e;
  }
}

/** Parses an in-memory ELF image (the vDSO); undefined when it is not parseable. */
function summarizeImage(bytes: Uint8Array, name: string): ElfImageSummary | undefined {
  try {
    return summaryOf(parseElf(bytes, { name }));
  } catch (e) {
    if (e instanceof ElfError) return undefined;
    throw e;
  }
}

/** What kind of image a module is. */
export type ModuleKind = 'executable' | 'library' | 'loader' | 'vdso';

/** A mapped ELF image in a process. */
export interface Module {
  /** File name (basename of `path`), or "[vdso]". */
  name: string;
  /** Path as shown in /proc/PID/maps (without " (deleted)"), or "[vdso]". */
  path: string;
  kind: ModuleKind;
  /** Lowest mapped address of the image (run-time). */
  base: bigint;
  /** One past the highest mapped address of the image's file mappings (run-time). */
  end: bigint;
  /** Run-time address minus link-time vaddr: runtime = loadBias + vaddr. */
  loadBias: bigint;
  /** GNU build-id (lower-case hex) when the image has one. */
  buildId?: string;
  /** e_type: 2 ET_EXEC (non-PIE executable), 3 ET_DYN (PIE, shared library, loader, vDSO). */
  elfType: number;
  /** Device and inode of the mapped file (0/"" for the vDSO). */
  dev: string;
  inode: number;
  /** The mapped file was deleted or replaced after it was mapped. */
  deleted: boolean;
  /**
   * `/proc/PID/map_files/...` of the module's lowest mapping: opens the really mapped inode even
   * when `path` was deleted or replaced. Undefined for the vDSO (read it from memory).
   */
  mapFilesPath?: string;
  /** The module's mappings (file-backed ones, in address order). */
  mappings: Mapping[];
  /** Program headers and build-id as read from the image. */
  elf: ElfImageSummary;
}

/** Cache of ELF summaries by identity of the mapped file (dev:ino:size:mtime). */
const summaryCache = new Map<string, ElfImageSummary | null>();
const SUMMARY_CACHE_MAX = 4096;

/**
 * Reads the ELF header, program headers and notes of a mapped file (only the prefix of the file
 * that holds them, not the whole file: executables such as node are ~100 MB).
 */
export function readElfSummaryFromFile(path: string): ElfImageSummary | undefined {
  return readOncePerFile(summaryCache, path, (fd, size) => {
    let result: ElfImageSummary | undefined;
    const head = readFileRange(fd, 0, Math.min(size, 4096));
    if (isElfMagic(head) && head.byteLength >= 64) {
      const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
      const phEnd = Number(dv.getBigUint64(32, true)) + dv.getUint16(54, true) * dv.getUint16(56, true);
      // Read only the prefix holding the program headers and the notes (files can be ~100 MB).
      let prefix = phEnd > head.byteLength && phEnd <= size ? readFileRange(fd, 0, phEnd) : head;
      const hdr = parseElfHeaders(prefix, path);
      if (hdr) {
        let need = prefix.byteLength;
        for (const ph of hdr.programHeaders) {
          if (ph.type === PT_NOTE && ph.offset + ph.filesz <= BigInt(size)) need = Math.max(need, Number(ph.offset + ph.filesz));
        }
        if (need > prefix.byteLength) prefix = readFileRange(fd, 0, need);
        const full = need > hdr.bytes.byteLength ? parseElfHeaders(prefix, path) : hdr;
        if (full) {
          try {
            result = summaryOf(full);
          } catch (e) {
            if (!(e instanceof ElfError)) throw e;
            // Broken notes: keep the headers, without a build-id.
            result = { type: full.header.type, entry: full.header.entry, programHeaders: full.programHeaders };
          }
        }
      }
    }
    return result;
  });
}

/**
 * `read(fd, size)` of the regular file at `path`, computed once per identity of the file
 * (dev:ino:size:mtime) and kept in `cache` (null: nothing found); undefined when the file cannot
 * be opened or read.
 */
function readOncePerFile<T>(cache: Map<string, T | null>, path: string, read: (fd: number, size: number) => T | undefined): T | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) return undefined;
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
    const cached = cache.get(key);
    if (cached !== undefined) return cached ?? undefined;
    const result = read(fd, Number(st.size));
    if (cache.size >= SUMMARY_CACHE_MAX) cache.clear();
    cache.set(key, result ?? null);
    return result;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Cache of DT_SONAME by identity of the file (dev:ino:size:mtime); null: none. */
const sonameCache = new Map<string, string | null>();

/**
 * DT_SONAME of a mapped file, read from its dynamic section and string table only (two small
 * reads, cached per file): what a library is, whatever the name of the file. Undefined when the
 * file has none or cannot be read.
 */
export function readSonameFromFile(path: string, elf: ElfImageSummary): string | undefined {
  const dyn = elf.programHeaders.find((p) => p.type === PT_DYNAMIC);
  if (!dyn || dyn.filesz === 0n || dyn.filesz > 0x10000n) return undefined;
  return readOncePerFile(sonameCache, path, (fd) => {
    const d = readFileRange(fd, Number(dyn.offset), Number(dyn.filesz));
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    let strtab: bigint | undefined;
    let strsz = 0n;
    let soname: bigint | undefined;
    for (let at = 0; at + 16 <= d.byteLength; at += 16) {
      const tag = dv.getBigInt64(at, true);
      const val = dv.getBigUint64(at + 8, true);
      if (tag === BigInt(DT_NULL)) break;
      if (tag === BigInt(DT_STRTAB)) strtab = val;
      else if (tag === BigInt(DT_STRSZ)) strsz = val;
      else if (tag === BigInt(DT_SONAME)) soname = val;
    }
    let result: string | undefined;
    // DT_STRTAB is a vaddr: the PT_LOAD holding it gives its file offset.
    const load = strtab === undefined ? undefined : elf.programHeaders.find((p) => p.type === PT_LOAD && p.vaddr <= strtab! && strtab! < p.vaddr + p.filesz);
    if (load && soname !== undefined && soname < strsz) {
      const bytes = readFileRange(fd, Number(load.offset + (strtab! - load.vaddr) + soname), Math.min(256, Number(strsz - soname)));
      const end = bytes.indexOf(0);
      if (end > 0) result = new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, end));
    }
    return result;
  });
}

/**
 * Load bias of an image from one of its mappings: the PT_LOAD segment containing the mapping's
 * file offset gives the vaddr mapped at `mapping.start`.
 */
export function computeLoadBias(elf: ElfImageSummary, mapping: Mapping): bigint | undefined {
  for (const ph of elf.programHeaders) {
    if (ph.type !== PT_LOAD) continue;
    const pageOff = ph.offset & ~0xfffn;
    if (mapping.fileOffset >= pageOff && mapping.fileOffset < ph.offset + (ph.filesz === 0n ? 1n : ph.filesz)) {
      // runtime(start) = bias + vaddr_of(fileOffset), vaddr_of(o) = p_vaddr + (o - p_offset)
      return mapping.start - (ph.vaddr + mapping.fileOffset - ph.offset);
    }
  }
  return undefined;
}

/**
 * Builds the module list from the mappings. `readMemory` reads the vDSO image (it has no file).
 */
export function buildModules(
  pid: number,
  mappings: Mapping[],
  auxv: Auxv | undefined,
  readMemory: (address: bigint, length: number) => Uint8Array,
): Module[] {
  void pid;
  // Group file mappings by (dev, inode, path); a new group starts when an offset-0 mapping of an
  // already-grouped file appears again (the same file mapped twice, e.g. dlmopen).
  const groups: Mapping[][] = [];
  const open = new Map<string, Mapping[]>();
  for (const m of mappings) {
    if (m.path === '[vdso]') {
      groups.push([m]);
      continue;
    }
    if (!m.isFile) continue;
    const key = `${m.dev}:${m.inode}:${m.path}`;
    const g = open.get(key);
    if (g && !(m.fileOffset === 0n && g.some((x) => x.fileOffset === 0n))) {
      g.push(m);
    } else {
      const ng = [m];
      open.set(key, ng);
      groups.push(ng);
    }
  }
  const modules: Module[] = [];
  for (const g of groups) {
    const lowest = g[0]!;
    let elf: ElfImageSummary | undefined;
    if (lowest.path === '[vdso]') {
      const len = Number(lowest.end - lowest.start);
      elf = len <= 1 << 20 ? summarizeImage(readMemory(lowest.start, len), '[vdso]') : undefined;
    } else {
      // Only a group whose lowest mapping covers the ELF header (offset 0) can be an ELF image.
      if (lowest.fileOffset !== 0n) continue;
      elf = (lowest.mapFilesPath && readElfSummaryFromFile(lowest.mapFilesPath)) || (!lowest.deleted ? readElfSummaryFromFile(lowest.path) : undefined);
    }
    if (!elf) continue;
    const bias = computeLoadBias(elf, lowest);
    if (bias === undefined) continue;
    let kind: ModuleKind = 'library';
    if (lowest.path === '[vdso]') kind = 'vdso';
    else if (auxv?.base !== undefined && auxv.base !== 0n && auxv.base === lowest.start) kind = 'loader';
    const end = g.reduce((a, m) => (m.end > a ? m.end : a), lowest.end);
    if (kind === 'library' && auxv?.phdr !== undefined && auxv.phdr >= lowest.start && auxv.phdr < end) kind = 'executable';
    const mod: Module = {
      name: lowest.path === '[vdso]' ? '[vdso]' : basename(lowest.path),
      path: lowest.path,
      kind,
      base: lowest.start,
      end,
      loadBias: bias,
      elfType: elf.type,
      dev: lowest.dev,
      inode: lowest.inode,
      deleted: lowest.deleted,
      mappings: g,
      elf,
    };
    if (elf.buildId !== undefined) mod.buildId = elf.buildId;
    if (lowest.mapFilesPath !== undefined) mod.mapFilesPath = lowest.mapFilesPath;
    modules.push(mod);
  }
  return modules;
}
