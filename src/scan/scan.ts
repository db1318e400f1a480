/**
 * `hotpatch scan`: which functions of a file or of a running process can be switched to new code,
 * and how. For each function symbol the x86 layer's classifyEntry decides:
 * - `padded`: compiled with hotpatch padding (or with enough NOP/INT3 alignment padding): one 2-byte
 *   write switches it;
 * - `plain`: no padding, but room for a 5-byte `jmp rel32` at the entry;
 * - `too-small`: cannot be switched (smaller than 5 bytes, undecodable, or a branch lands inside the
 *   bytes the switch would overwrite when `checkBranches` is on).
 * "Hotpatchable" counts padded + plain: every function the engine can switch.
 *
 * File scans classify the bytes of the file at link-time vaddrs. Process scans classify the bytes
 * that are really in memory (a patched or tampered process shows what it runs) at run-time
 * addresses. Symbol tables are cached per file (inode and build-id) and classifications per
 * (file, hash of the executable bytes), so scanning every process of a machine reuses the work
 * done for a shared library in the first process that maps it.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { ElfError, HotpatchError, ProcessError } from '../errors.js';
import {
  ET_REL,
  PF_X,
  PT_LOAD,
  STB_GLOBAL,
  STB_WEAK,
  parseElf,
  DEFAULT_DEBUG_DIRS,
  findDebugFile,
  type ElfFile,
} from '../elf/index.js';
import { classifyEntry, type EntryForm } from '../x86/index.js';
import {
  enumerateProcessIds,
  openProcess,
  PROCESS_KERNEL_THREAD,
  PROCESS_NOT_FOUND,
  PROCESS_ZOMBIE,
  type Module,
  type ModuleKind,
  type Process,
} from '../process/index.js';

/** Entry kinds as printed by `hotpatch scan --json`. */
export type ScanEntryKind = 'padded' | 'plain' | 'too-small';

/** One function of a scanned module. */
export interface ScannedFunction {
  /** Symbol name (the preferred one when several symbols share the address; see `aliases`). */
  name: string;
  /** Link-time vaddr for a file scan, run-time address for a process scan (ET_REL: section offset). */
  address: bigint;
  size: number;
  entry: ScanEntryKind;
  /** The detailed form from classifyEntry (patchable-function-entry, ms-hook-prologue, padding, ...). */
  form: EntryForm;
  /** Other symbol names at the same address. */
  aliases?: string[];
  /** Why the function is not padded / cannot be switched. */
  reason?: string;
  /** For relocatable objects (ET_REL): the section the function lives in. */
  section?: string;
}

/** Counts of a module scan. */
export interface ScanCounts {
  /** padded + plain: functions the engine can switch. */
  hotpatchable: number;
  total: number;
  padded: number;
  plain: number;
  tooSmall: number;
  /** hotpatchable / total in percent, one decimal (0 when there are no functions). */
  percent: number;
  /** padded / total in percent, one decimal. */
  paddedPercent: number;
  /**
   * Functions per detailed form: `patchable-function-entry` and `ms-hook-prologue` are compiled-in
   * hotpatch support; `padding` is ordinary alignment padding that happens to be usable.
   */
  forms: Partial<Record<EntryForm, number>>;
}

/** The scan of one ELF image (a file, or a module of a process). */
export interface ModuleScan extends ScanCounts {
  /** File path (for a process module: as in /proc/PID/maps; "[vdso]" for the vDSO). */
  path: string;
  buildId: string | null;
  /** Module kind in a process; "file" for a file scan. */
  kind: ModuleKind | 'file';
  /** Run-time minus link-time address (0 for a file scan). */
  loadBias: bigint;
  /** Where the function symbols came from. */
  symbolTable: 'symtab' | 'dynsym' | 'none';
  /** The debug file whose .symtab named the functions (file scans of stripped files). */
  debugFile?: string;
  functions: ScannedFunction[];
  /** Set when this module could not be scanned (the other modules of the process still are). */
  error?: { code: string; message: string };
}

/** Result of scanFile. */
export interface ScanResult {
  modules: ModuleScan[];
}

/** Result of scanProcess. */
export interface ProcessScan extends ScanResult {
  pid: number;
  /** Process name (comm). */
  name: string;
  exe: string;
}

/** Options of the scan functions. */
export interface ScanOptions {
  /**
   * Decode whole functions and treat an entry as `too-small` when a branch inside the function
   * lands in the bytes the switch overwrites. Slower; off by default.
   */
  checkBranches?: boolean;
  /** Share caches across calls (scanAllProcesses creates one). */
  cache?: ScanCache;
  /**
   * File scans: the symbols of a stripped file from its separate debug file or unstripped copy (same
   * build-id, else HotpatchError SCAN_DEBUG_MISMATCH). Without it, a file without .symtab is looked
   * up in `debugDirs` by build-id (DIR/.build-id/XX/YYYY.debug).
   */
  debugFile?: string;
  /** Where debug files are looked up by build-id (default /usr/lib/debug). */
  debugDirs?: readonly string[];
}

/** A function symbol (deduplicated by address) in link-time terms. */
interface FunctionSym {
  name: string;
  aliases: string[];
  value: bigint;
  size: number;
  shndx: number;
  /** End of the previous function in the same section: padding cannot start before it. */
  floor?: bigint;
}

interface FunctionTable {
  buildId: string | null;
  elfType: number;
  symbolTable: 'symtab' | 'dynsym' | 'none';
  functions: FunctionSym[];
  /** Section names by index (only for ET_REL). */
  sectionNames?: string[];
  debugFile?: string;
}

/** Classification of one function, link-time, independent of the load bias. */
interface Classified {
  entry: ScanEntryKind;
  form: EntryForm;
  reason?: string;
}

/** Caches shared across scans; safe to keep for the life of a scanning process. */
export class ScanCache {
  readonly tables = new Map<string, FunctionTable>();
  readonly classified = new Map<string, Classified[]>();
  /** Counters for reports and tests. */
  readonly stats = { tableHits: 0, tableMisses: 0, classifyHits: 0, classifyMisses: 0, bytesRead: 0 };

  /** Drops everything (the caches only grow otherwise). */
  clear(): void {
    this.tables.clear();
    this.classified.clear();
  }
}

const defaultCache = new ScanCache();

// ------------------------------------------------------------------ symbol tables

function bindRank(bind: number): number {
  return bind === STB_GLOBAL ? 0 : bind === STB_WEAK ? 1 : 2;
}

function leadingUnderscores(s: string): number {
  let i = 0;
  while (s.charCodeAt(i) === 95) i++;
  return i;
}

function buildTable(elf: ElfFile): FunctionTable {
  const syms = elf.functionSymbols();
  const symbolTable: FunctionTable['symbolTable'] = syms.length === 0 ? 'none' : syms[0]!.dynamic ? 'dynsym' : 'symtab';
  const isRel = elf.header.type === ET_REL;
  // Deduplicate by (section, address): aliases such as malloc/__libc_malloc are one function.
  const byAddr = new Map<string, { syms: typeof syms }>();
  for (const s of syms) {
    const key = `${isRel ? s.shndx : 0}:${s.value}`;
    const e = byAddr.get(key);
    if (e) e.syms.push(s);
    else byAddr.set(key, { syms: [s] });
  }
  const functions: FunctionSym[] = [];
  for (const { syms: group } of byAddr.values()) {
    group.sort(
      (a, b) =>
        bindRank(a.bind) - bindRank(b.bind) ||
        leadingUnderscores(a.name) - leadingUnderscores(b.name) ||
        (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    );
    const first = group[0]!;
    const size = group.reduce((m, s) => (s.size > m ? s.size : m), 0n);
    const names = [...new Set(group.map((s) => s.name))];
    functions.push({
      name: first.name,
      aliases: names.slice(1),
      value: first.value,
      // Sizes above 2^31 are nonsense for a function; clamp so they stay numbers.
      size: size > 0x7fffffffn ? 0x7fffffff : Number(size),
      shndx: first.shndx,
    });
  }
  functions.sort((a, b) => (a.shndx - b.shndx) * (isRel ? 1 : 0) || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0));
  let prevEnd: bigint | undefined;
  let prevSection = -1;
  for (const f of functions) {
    if (isRel && f.shndx !== prevSection) prevEnd = undefined;
    prevSection = f.shndx;
    if (prevEnd !== undefined) f.floor = prevEnd;
    const end = f.value + BigInt(f.size);
    if (prevEnd === undefined || end > prevEnd) prevEnd = end;
  }
  const table: FunctionTable = { buildId: elf.buildId, elfType: elf.header.type, symbolTable, functions };
  if (isRel) table.sectionNames = elf.sections.map((s) => s.name);
  return table;
}

// ------------------------------------------------------------------ classification

/** Executable bytes at link-time addresses. */
interface CodeRegion {
  /** Link-time vaddr of bytes[0] (for ET_REL: 0 = section start). */
  start: bigint;
  bytes: Uint8Array;
  /** For ET_REL: the section index this region is. */
  shndx?: number;
}

const MAX_BEFORE = 16;

function classifyTable(table: FunctionTable, regions: CodeRegion[], checkBranches: boolean): Classified[] {
  const isRel = table.sectionNames !== undefined;
  const out: Classified[] = new Array(table.functions.length);
  let hint = 0;
  for (let i = 0; i < table.functions.length; i++) {
    const f = table.functions[i]!;
    let region: CodeRegion | undefined;
    if (isRel) region = regions.find((r) => r.shndx === f.shndx);
    else {
      // Functions are sorted by address: most lookups hit the previous region.
      const contains = (r: CodeRegion) => f.value >= r.start && f.value < r.start + BigInt(r.bytes.byteLength);
      if (regions[hint] && contains(regions[hint]!)) region = regions[hint];
      else {
        const j = regions.findIndex(contains);
        if (j >= 0) {
          hint = j;
          region = regions[j];
        }
      }
    }
    if (!region || f.value - region.start >= BigInt(region.bytes.byteLength)) {
      out[i] = { entry: 'too-small', form: 'undecodable', reason: 'the function is not in executable memory' };
      continue;
    }
    const off = Number(f.value - region.start);
    const code = region.bytes.subarray(off, Math.min(region.bytes.byteLength, off + f.size));
    const before = region.bytes.subarray(Math.max(0, off - MAX_BEFORE), off);
    try {
      const c = classifyEntry({ address: f.value, code, before, paddingFloor: f.floor, checkBranches });
      let entry: ScanEntryKind = c.kind === 'undecodable' ? 'too-small' : c.kind;
      let reason = c.reason;
      if (checkBranches && entry !== 'too-small' && c.branchesIntoSite.length > 0) {
        entry = 'too-small';
        reason = `a branch at 0x${c.branchesIntoSite[0]!.toString(16)} lands inside the bytes the switch overwrites`;
      }
      const r: Classified = { entry, form: c.form };
      if (reason !== undefined) r.reason = reason;
      out[i] = r;
    } catch (e) {
      out[i] = { entry: 'too-small', form: 'undecodable', reason: (e as Error).message };
    }
  }
  return out;
}

function contentKey(regions: CodeRegion[]): string {
  const h = createHash('sha1');
  for (const r of regions) {
    h.update(`${r.start}:${r.shndx ?? ''}:${r.bytes.byteLength};`);
    h.update(r.bytes);
  }
  return h.digest('hex');
}

function countsOf(functions: ScannedFunction[]): ScanCounts {
  let padded = 0;
  let plain = 0;
  let tooSmall = 0;
  const forms: Partial<Record<EntryForm, number>> = {};
  for (const f of functions) {
    forms[f.form] = (forms[f.form] ?? 0) + 1;
    if (f.entry === 'padded') padded++;
    else if (f.entry === 'plain') plain++;
    else tooSmall++;
  }
  const total = functions.length;
  const pct = (n: number) => (total === 0 ? 0 : Math.round((n / total) * 1000) / 10);
  return { hotpatchable: padded + plain, total, padded, plain, tooSmall, percent: pct(padded + plain), paddedPercent: pct(padded), forms };
}

function assemble(
  table: FunctionTable,
  classified: Classified[],
  info: { path: string; kind: ModuleScan['kind']; loadBias: bigint },
): ModuleScan {
  const functions: ScannedFunction[] = table.functions.map((f, i) => {
    const c = classified[i]!;
    const sf: ScannedFunction = { name: f.name, address: f.value + info.loadBias, size: f.size, entry: c.entry, form: c.form };
    if (f.aliases.length > 0) sf.aliases = f.aliases;
    if (c.reason !== undefined) sf.reason = c.reason;
    if (table.sectionNames) sf.section = table.sectionNames[f.shndx] ?? `#${f.shndx}`;
    return sf;
  });
  return {
    path: info.path,
    buildId: table.buildId,
    kind: info.kind,
    loadBias: info.loadBias,
    symbolTable: table.symbolTable,
    ...(table.debugFile !== undefined ? { debugFile: table.debugFile } : {}),
    functions,
    ...countsOf(functions),
  };
}

function classifyCached(cache: ScanCache, tableKey: string, table: FunctionTable, regions: CodeRegion[], checkBranches: boolean): Classified[] {
  const key = `${tableKey}|${contentKey(regions)}|${checkBranches ? 'b' : '-'}`;
  let c = cache.classified.get(key);
  if (c) {
    cache.stats.classifyHits++;
    return c;
  }
  cache.stats.classifyMisses++;
  c = classifyTable(table, regions, checkBranches);
  cache.classified.set(key, c);
  return c;
}

// ------------------------------------------------------------------ files

function fileRegions(elf: ElfFile, table: FunctionTable): CodeRegion[] {
  if (table.sectionNames) {
    const shndxs = new Set(table.functions.map((f) => f.shndx));
    const out: CodeRegion[] = [];
    for (const i of shndxs) {
      const s = elf.sections[i];
      if (s) out.push({ start: 0n, bytes: elf.sectionData(s), shndx: i });
    }
    return out;
  }
  return elf.programHeaders
    .filter((p) => p.type === PT_LOAD && (p.flags & PF_X) !== 0)
    .map((p) => {
      // Only the file part: code never lives in the zero-filled tail.
      const bytes = elf.segmentData(p);
      return { start: p.vaddr, bytes: bytes.subarray(0, Number(p.filesz < p.memsz ? p.filesz : p.memsz)) };
    });
}

/**
 * Scans an ELF file on disk (executable, shared library or relocatable object). Addresses are
 * link-time vaddrs. Throws HotpatchError FILE_NOT_FOUND / FILE_NOT_READABLE, ElfError for files
 * that are not (valid) ELF.
 */
export function scanFile(path: string, options: ScanOptions = {}): ScanResult {
  const cache = options.cache ?? defaultCache;
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path, { bigint: true });
  } catch (e) {
    throw fileError(e, path);
  }
  if (!st.isFile()) throw new HotpatchError('FILE_NOT_READABLE', `${path} is not a regular file`);
  const identity = `file:${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}${options.debugFile !== undefined ? `|debug:${options.debugFile}` : ''}`;
  const checkBranches = options.checkBranches ?? false;
  // A file's identity fixes its content: hard links and repeated scans reuse the result unread.
  const fileKey = `${identity}|file|${checkBranches ? 'b' : '-'}`;
  const cachedTable = cache.tables.get(identity);
  const cachedClass = cache.classified.get(fileKey);
  if (cachedTable && cachedClass) {
    cache.stats.tableHits++;
    cache.stats.classifyHits++;
    return { modules: [assemble(cachedTable, cachedClass, { path, kind: 'file', loadBias: 0n })] };
  }
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw fileError(e, path);
  }
  cache.stats.bytesRead += bytes.byteLength;
  if (bytes.byteLength < 4 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    throw new ElfError('ELF_BAD_MAGIC', `${path} is not an ELF file`);
  }
  const elf = parseElf(bytes, { name: path });
  cache.stats.tableMisses++;
  const debug = options.debugFile ?? (elf.symbols.length === 0 && elf.buildId !== null ? findDebugFile(elf.buildId, options.debugDirs ?? DEFAULT_DEBUG_DIRS) : undefined);
  if (debug !== undefined) {
    let d: ElfFile;
    try {
      d = parseElf(readFileSync(debug), { name: debug });
    } catch (e) {
      if (e instanceof ElfError) throw e;
      throw fileError(e, debug);
    }
    if (d.buildId === null || d.buildId !== elf.buildId) {
      throw new HotpatchError('SCAN_DEBUG_MISMATCH', `${debug} (build-id ${d.buildId ?? 'none'}) is not the debug file of ${path} (build-id ${elf.buildId ?? 'none'})`);
    }
    elf.adoptSymbols(d);
  }
  const table = buildTable(elf);
  if (debug !== undefined) table.debugFile = debug;
  cache.tables.set(identity, table);
  cache.stats.classifyMisses++;
  const classified = classifyTable(table, fileRegions(elf, table), checkBranches);
  cache.classified.set(fileKey, classified);
  return { modules: [assemble(table, classified, { path, kind: 'file', loadBias: 0n })] };
}

function fileError(e: unknown, path: string): HotpatchError {
  const code = (e as { code?: string }).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new HotpatchError('FILE_NOT_FOUND', `${path}: no such file`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new HotpatchError('FILE_NOT_READABLE', `${path}: permission denied`, { cause: e });
  if (code === 'EISDIR') return new HotpatchError('FILE_NOT_READABLE', `${path} is a directory`, { cause: e });
  return new HotpatchError('FILE_NOT_READABLE', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
}

// ------------------------------------------------------------------ processes

function tableForModule(p: Process, m: Module, cache: ScanCache): { key: string; table: FunctionTable } {
  let identity: string;
  let size = 0n;
  if (m.kind === 'vdso') {
    identity = `vdso:${m.buildId ?? 'none'}:${m.end - m.base}`;
  } else {
    const file = m.mapFilesPath ?? m.path;
    try {
      const st = statSync(file, { bigint: true });
      size = st.size;
      identity = `file:${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`;
    } catch {
      identity = `map:${m.dev}:${m.inode}:${m.path}`;
    }
  }
  const byBuildId = m.buildId ? `bid:${m.buildId}:${size}` : undefined;
  const hit = cache.tables.get(identity) ?? (byBuildId ? cache.tables.get(byBuildId) : undefined);
  if (hit) {
    cache.stats.tableHits++;
    return { key: byBuildId ?? identity, table: hit };
  }
  cache.stats.tableMisses++;
  let bytes: Uint8Array;
  if (m.kind === 'vdso') bytes = p.readMemory(m.base, Number(m.end - m.base));
  else {
    const candidates = m.mapFilesPath ? [m.mapFilesPath, ...(m.deleted ? [] : [m.path])] : [m.path];
    let lastErr: unknown;
    let got: Uint8Array | undefined;
    for (const c of candidates) {
      try {
        got = readFileSync(c);
        break;
      } catch (e) {
        lastErr = e;
      }
    }
    if (!got) throw fileError(lastErr, m.path);
    bytes = got;
  }
  cache.stats.bytesRead += bytes.byteLength;
  const table = buildTable(parseElf(bytes, { name: m.path }));
  cache.tables.set(identity, table);
  if (byBuildId) cache.tables.set(byBuildId, table);
  return { key: byBuildId ?? identity, table };
}

function scanModule(p: Process, m: Module, cache: ScanCache, checkBranches: boolean): ModuleScan {
  const { key, table } = tableForModule(p, m, cache);
  // The executable mappings as they are in memory, in link-time terms.
  const regions: CodeRegion[] = [];
  for (const mp of m.mappings) {
    if (!mp.protection.execute) continue;
    const bytes = p.readMemory(mp.start, Number(mp.end - mp.start));
    cache.stats.bytesRead += bytes.byteLength;
    regions.push({ start: mp.start - m.loadBias, bytes });
  }
  const classified = classifyCached(cache, key, table, regions, checkBranches);
  return assemble(table, classified, { path: m.path, kind: m.kind, loadBias: m.loadBias });
}

function isGone(e: unknown): boolean {
  return e instanceof ProcessError && (e.code === PROCESS_NOT_FOUND || e.code === PROCESS_ZOMBIE);
}

/**
 * Scans every ELF module mapped by a running process (executable, libraries, loader, vDSO) using
 * the bytes in its memory. Addresses are run-time. Throws ProcessError when the process cannot be
 * read (not found, zombie, kernel thread, permission); a module whose file cannot be parsed gets an
 * `error` instead of functions.
 */
export function scanProcess(pid: number, options: ScanOptions = {}): ProcessScan {
  const cache = options.cache ?? defaultCache;
  const p = openProcess(pid);
  try {
    const name = p.getStatus().name;
    let exe = '';
    try {
      exe = p.getExePath();
    } catch (e) {
      if (isGone(e)) throw e;
    }
    const modules: ModuleScan[] = [];
    for (const m of p.enumerateModules()) {
      try {
        modules.push(scanModule(p, m, cache, options.checkBranches ?? false));
      } catch (e) {
        if (isGone(e) || !(e instanceof HotpatchError)) throw e;
        // Memory of a module that cannot be read while the process lives, or a broken file.
        if (!p.isAlive()) p.assertAlive();
        modules.push({
          path: m.path,
          buildId: m.buildId ?? null,
          kind: m.kind,
          loadBias: m.loadBias,
          symbolTable: 'none',
          functions: [],
          ...countsOf([]),
          error: { code: e.code, message: e.message },
        });
      }
    }
    return { pid, name, exe, modules };
  } finally {
    p.close();
  }
}

/** One process in scanAllProcesses. */
export interface ProcessScanEntry {
  pid: number;
  name?: string;
  exe?: string;
  modules?: ModuleScan[];
  /** Set when the process could not be scanned (e.g. permission denied). */
  error?: { code: string; message: string };
}

/** Result of scanAllProcesses. */
export interface AllProcessesScan {
  processes: ProcessScanEntry[];
  /** Processes scanned completely. */
  scanned: number;
  /** Processes that could not be scanned (listed with `error`). */
  failed: number;
  /** Kernel threads (no user address space), not listed. */
  kernelThreads: number;
  /** Processes that exited (or were zombies) during the scan, not listed. */
  exited: number;
  /** Distinct modules classified (cache misses), and cache hits. */
  modulesClassified: number;
  moduleCacheHits: number;
  seconds: number;
}

/**
 * Scans every process of the machine, skipping kernel threads and processes that exit meanwhile;
 * a process that cannot be read is reported with its error and the scan goes on.
 */
export function scanAllProcesses(options: ScanOptions & { pids?: number[] } = {}): AllProcessesScan {
  const cache = options.cache ?? new ScanCache();
  const t0 = performance.now();
  const before = { ...cache.stats };
  const out: AllProcessesScan = {
    processes: [],
    scanned: 0,
    failed: 0,
    kernelThreads: 0,
    exited: 0,
    modulesClassified: 0,
    moduleCacheHits: 0,
    seconds: 0,
  };
  for (const pid of options.pids ?? enumerateProcessIds()) {
    try {
      const r = scanProcess(pid, { ...options, cache });
      out.processes.push(r);
      out.scanned++;
    } catch (e) {
      if (e instanceof ProcessError && e.code === PROCESS_KERNEL_THREAD) out.kernelThreads++;
      else if (isGone(e)) out.exited++;
      else if (e instanceof HotpatchError) {
        out.failed++;
        out.processes.push({ pid, error: { code: e.code, message: e.message } });
      } else {
        out.failed++;
        out.processes.push({ pid, error: { code: 'INTERNAL', message: (e as Error)?.message ?? String(e) } });
      }
    }
  }
  out.modulesClassified = cache.stats.classifyMisses - before.classifyMisses;
  out.moduleCacheHits = cache.stats.classifyHits - before.classifyHits;
  out.seconds = Math.round(performance.now() - t0) / 1000;
  return out;
}
