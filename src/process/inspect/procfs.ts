/**
 * Pure parsers for the text and binary files under /proc/PID. They take the file contents (so they
 * can be tested against hostile input) and throw ProcessError(PROCESS_BAD_PROCFS) on malformed data.
 */
import { ProcessError } from '../../errors.js';
import { PROCESS_BAD_PROCFS } from './errors.js';

/** Access rights of a mapping, as in the `perms` column of /proc/PID/maps. */
export interface MappingPermissions {
  read: boolean;
  write: boolean;
  execute: boolean;
  /** `true` for a shared mapping (`s`), `false` for private copy-on-write (`p`). */
  shared: boolean;
}

/** One line of /proc/PID/maps. Addresses are run-time (process) addresses. */
export interface Mapping {
  /** First byte of the mapping. */
  start: bigint;
  /** One past the last byte. */
  end: bigint;
  /** The raw perms column, e.g. "r-xp". */
  perms: string;
  protection: MappingPermissions;
  /** Offset in the mapped file of `start` (0 for anonymous mappings). */
  fileOffset: bigint;
  /** Device "major:minor" in hex as printed by the kernel, e.g. "fd:01". */
  dev: string;
  inode: number;
  /**
   * Path or pseudo-path (`[heap]`, `[stack]`, `[vdso]`, `[vvar]`, `[anon:name]`, `/memfd:x`),
   * without the " (deleted)" suffix; "" for an anonymous mapping.
   */
  path: string;
  /** The mapped file was deleted or replaced since it was mapped (" (deleted)" suffix). */
  deleted: boolean;
  /** True when backed by a file (inode != 0); such mappings can be opened through `mapFilesPath`. */
  isFile: boolean;
  /**
   * `/proc/PID/map_files/START-END`: opens the mapped inode itself even when the path was
   * deleted or replaced (needs CAP_SYS_ADMIN, i.e. root). Only set for file mappings.
   */
  mapFilesPath?: string;
}

const DELETED_SUFFIX = ' (deleted)';

function bad(what: string, line: string): ProcessError {
  return new ProcessError(PROCESS_BAD_PROCFS, `malformed ${what}: ${JSON.stringify(line.slice(0, 200))}`);
}

const HEX_RE = /^[0-9a-f]+$/i;

function parseHex(s: string, what: string, line: string): bigint {
  if (!HEX_RE.test(s) || s.length > 16) throw bad(what, line);
  return BigInt(`0x${s}`);
}

/**
 * Parses /proc/PID/maps. `pid` is used to build the map_files path of each file mapping.
 * The format is `start-end perms offset dev inode [path]` with the path padded by spaces; paths
 * may themselves contain spaces (only the leading padding is removed).
 */
export function parseMaps(text: string, pid?: number): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    out.push(parseMapsLine(line, pid));
  }
  return out;
}

/** Parses one line of /proc/PID/maps (also the header lines of /proc/PID/smaps). */
export function parseMapsLine(line: string, pid?: number): Mapping {
  // Five fixed fields, then optional path after padding.
  const m = /^([0-9a-fA-F]+)-([0-9a-fA-F]+) ([r-][w-][x-][ps]) ([0-9a-fA-F]+) ([0-9a-fA-F]+:[0-9a-fA-F]+) (\d+)(?: +(.*))?$/.exec(line);
  if (!m) throw bad('/proc/PID/maps line', line);
  const [, s, e, perms, off, dev, ino, rawPath] = m as unknown as [string, string, string, string, string, string, string, string | undefined];
  const start = parseHex(s, 'mapping start', line);
  const end = parseHex(e, 'mapping end', line);
  if (end < start) throw bad('mapping range', line);
  const inode = Number(ino);
  if (!Number.isSafeInteger(inode)) throw bad('inode', line);
  let path = rawPath ?? '';
  let deleted = false;
  if (inode !== 0 && path.endsWith(DELETED_SUFFIX)) {
    deleted = true;
    path = path.slice(0, -DELETED_SUFFIX.length);
  }
  const isFile = inode !== 0;
  const mapping: Mapping = {
    start,
    end,
    perms,
    protection: { read: perms[0] === 'r', write: perms[1] === 'w', execute: perms[2] === 'x', shared: perms[3] === 's' },
    fileOffset: parseHex(off, 'file offset', line),
    dev: dev.toLowerCase(),
    inode,
    path,
    deleted,
    isFile,
  };
  // map_files entries are named "%lx-%lx" (no zero padding), unlike maps which pads to 8 digits.
  if (isFile && pid !== undefined) mapping.mapFilesPath = `/proc/${pid}/map_files/${start.toString(16)}-${end.toString(16)}`;
  return mapping;
}

/** The four ids of a Uid:/Gid: line. */
export interface IdSet {
  real: number;
  effective: number;
  saved: number;
  fs: number;
}

/** Selected, typed fields of /proc/PID/status; `raw` holds every field as text. */
export interface ProcessStatus {
  name: string;
  /** Single state letter: R, S, D, T, t, Z, X, I, ... */
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  /** Pid of the process tracing this one (0: not traced). */
  tracerPid: number;
  uid: IdSet;
  gid: IdSet;
  groups: number[];
  threads?: number;
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: boolean;
  /** 0 disabled, 1 strict, 2 filter. */
  seccomp: number;
  seccompFilters?: number;
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  /** `Kthread:` field on newer kernels (absent on older ones). */
  kthread?: boolean;
  raw: Record<string, string>;
}

function hexField(raw: Record<string, string>, key: string, line = ''): bigint {
  const v = raw[key];
  if (v === undefined) return 0n;
  return parseHex(v, `status field ${key}`, line || `${key}: ${v}`);
}

function intField(raw: Record<string, string>, key: string): number | undefined {
  const v = raw[key];
  if (v === undefined) return undefined;
  const n = Number(v.trim().split(/\s+/)[0]);
  if (!Number.isSafeInteger(n)) throw bad(`status field ${key}`, v);
  return n;
}

function idSet(raw: Record<string, string>, key: string): IdSet {
  const v = raw[key];
  if (v === undefined) return { real: -1, effective: -1, saved: -1, fs: -1 };
  const parts = v.trim().split(/\s+/).map(Number);
  if (parts.length !== 4 || parts.some((n) => !Number.isSafeInteger(n))) throw bad(`status field ${key}`, v);
  return { real: parts[0]!, effective: parts[1]!, saved: parts[2]!, fs: parts[3]! };
}

/** Parses /proc/PID/status. */
export function parseStatus(text: string): ProcessStatus {
  const raw: Record<string, string> = {};
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const i = line.indexOf(':');
    if (i <= 0) throw bad('/proc/PID/status line', line);
    raw[line.slice(0, i)] = line.slice(i + 1).replace(/^\s+/, '');
  }
  if (raw.Name === undefined || raw.State === undefined || raw.Pid === undefined) throw bad('/proc/PID/status', text);
  const req = (k: string): number => {
    const n = intField(raw, k);
    if (n === undefined) throw bad(`/proc/PID/status (missing ${k})`, text);
    return n;
  };
  const groups = (raw.Groups ?? '').trim();
  const kt = intField(raw, 'Kthread');
  return {
    name: raw.Name,
    state: raw.State.trim().charAt(0),
    tgid: req('Tgid'),
    pid: req('Pid'),
    ppid: req('PPid'),
    tracerPid: intField(raw, 'TracerPid') ?? 0,
    uid: idSet(raw, 'Uid'),
    gid: idSet(raw, 'Gid'),
    groups: groups === '' ? [] : groups.split(/\s+/).map(Number),
    threads: intField(raw, 'Threads'),
    capInh: hexField(raw, 'CapInh'),
    capPrm: hexField(raw, 'CapPrm'),
    capEff: hexField(raw, 'CapEff'),
    capBnd: hexField(raw, 'CapBnd'),
    capAmb: hexField(raw, 'CapAmb'),
    noNewPrivs: (intField(raw, 'NoNewPrivs') ?? 0) !== 0,
    seccomp: intField(raw, 'Seccomp') ?? 0,
    seccompFilters: intField(raw, 'Seccomp_filters'),
    sigPnd: hexField(raw, 'SigPnd'),
    shdPnd: hexField(raw, 'ShdPnd'),
    sigBlk: hexField(raw, 'SigBlk'),
    sigIgn: hexField(raw, 'SigIgn'),
    sigCgt: hexField(raw, 'SigCgt'),
    kthread: kt === undefined ? undefined : kt !== 0,
    raw,
  };
}

/** Fields of /proc/PID/stat (and /proc/PID/task/TID/stat) that the inspector needs. */
export interface ProcStat {
  pid: number;
  /** `comm` (up to 15 characters; may contain spaces and parentheses). */
  comm: string;
  state: string;
  ppid: number;
  /** Kernel task flags (PF_*). */
  flags: number;
  /** Start time in clock ticks after boot: with the pid it identifies a process across pid reuse. */
  startTime: bigint;
}

/** PF_KTHREAD from include/linux/sched.h: the task is a kernel thread. */
export const PF_KTHREAD = 0x00200000;

/** Parses /proc/PID/stat. `comm` is found by the last ')' because it may contain any byte. */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open) throw bad('/proc/PID/stat', text);
  const pid = Number(text.slice(0, open).trim());
  const rest = text.slice(close + 2).trim().split(' ');
  // rest[0] is field 3 (state); field N is rest[N-3].
  if (!Number.isSafeInteger(pid) || rest.length < 20) throw bad('/proc/PID/stat', text);
  const ppid = Number(rest[1]);
  const flags = Number(rest[6]);
  const st = rest[19]!;
  if (!Number.isSafeInteger(ppid) || !Number.isSafeInteger(flags) || !/^\d+$/.test(st)) throw bad('/proc/PID/stat', text);
  return { pid, comm: text.slice(open + 1, close), state: rest[0]!, ppid, flags, startTime: BigInt(st) };
}

/** Auxiliary vector types (include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h). */
export const AT_NULL = 0;
export const AT_IGNORE = 1;
export const AT_EXECFD = 2;
export const AT_PHDR = 3;
export const AT_PHENT = 4;
export const AT_PHNUM = 5;
export const AT_PAGESZ = 6;
export const AT_BASE = 7;
export const AT_FLAGS = 8;
export const AT_ENTRY = 9;
export const AT_NOTELF = 10;
export const AT_UID = 11;
export const AT_EUID = 12;
export const AT_GID = 13;
export const AT_EGID = 14;
export const AT_PLATFORM = 15;
export const AT_HWCAP = 16;
export const AT_CLKTCK = 17;
export const AT_SECURE = 23;
export const AT_BASE_PLATFORM = 24;
export const AT_RANDOM = 25;
export const AT_HWCAP2 = 26;
export const AT_RSEQ_FEATURE_SIZE = 27;
export const AT_RSEQ_ALIGN = 28;
export const AT_EXECFN = 31;
export const AT_SYSINFO_EHDR = 33;
export const AT_MINSIGSTKSZ = 51;

const AT_NAMES: Record<number, string> = {
  [AT_NULL]: 'AT_NULL', [AT_IGNORE]: 'AT_IGNORE', [AT_EXECFD]: 'AT_EXECFD', [AT_PHDR]: 'AT_PHDR',
  [AT_PHENT]: 'AT_PHENT', [AT_PHNUM]: 'AT_PHNUM', [AT_PAGESZ]: 'AT_PAGESZ', [AT_BASE]: 'AT_BASE',
  [AT_FLAGS]: 'AT_FLAGS', [AT_ENTRY]: 'AT_ENTRY', [AT_NOTELF]: 'AT_NOTELF', [AT_UID]: 'AT_UID',
  [AT_EUID]: 'AT_EUID', [AT_GID]: 'AT_GID', [AT_EGID]: 'AT_EGID', [AT_PLATFORM]: 'AT_PLATFORM',
  [AT_HWCAP]: 'AT_HWCAP', [AT_CLKTCK]: 'AT_CLKTCK', [AT_SECURE]: 'AT_SECURE',
  [AT_BASE_PLATFORM]: 'AT_BASE_PLATFORM', [AT_RANDOM]: 'AT_RANDOM', [AT_HWCAP2]: 'AT_HWCAP2',
  [AT_RSEQ_FEATURE_SIZE]: 'AT_RSEQ_FEATURE_SIZE', [AT_RSEQ_ALIGN]: 'AT_RSEQ_ALIGN',
  [AT_EXECFN]: 'AT_EXECFN', [AT_SYSINFO_EHDR]: 'AT_SYSINFO_EHDR', [AT_MINSIGSTKSZ]: 'AT_MINSIGSTKSZ',
};

/** One entry of the auxiliary vector. */
export interface AuxvEntry {
  type: number;
  /** `AT_*` name, or `AT_<number>` for types this table does not know. */
  name: string;
  value: bigint;
}

/** The auxiliary vector with the entries the inspector uses picked out. */
export interface Auxv {
  entries: AuxvEntry[];
  /** Address of the vDSO ELF header. */
  sysinfoEhdr?: bigint;
  /** Load address of the dynamic loader (0 / absent for static executables). */
  base?: bigint;
  /** Run-time address of the main executable's program headers. */
  phdr?: bigint;
  phent?: bigint;
  phnum?: bigint;
  /** Run-time entry point of the main executable. */
  entry?: bigint;
  pagesz?: bigint;
  hwcap?: bigint;
  hwcap2?: bigint;
  secure?: bigint;
  execfn?: bigint;
  random?: bigint;
}

/** Parses /proc/PID/auxv (pairs of little-endian u64 type/value, ended by AT_NULL). */
export function parseAuxv(bytes: Uint8Array): Auxv {
  if (bytes.byteLength % 16 !== 0) {
    throw new ProcessError(PROCESS_BAD_PROCFS, `malformed /proc/PID/auxv: ${bytes.byteLength} bytes is not a multiple of 16`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const entries: AuxvEntry[] = [];
  const out: Auxv = { entries };
  for (let off = 0; off < bytes.byteLength; off += 16) {
    const t = dv.getBigUint64(off, true);
    const value = dv.getBigUint64(off + 8, true);
    if (t === 0n) break;
    if (t > 0xffffn) throw new ProcessError(PROCESS_BAD_PROCFS, `malformed /proc/PID/auxv: type ${t} at offset ${off}`);
    const type = Number(t);
    entries.push({ type, name: AT_NAMES[type] ?? `AT_${type}`, value });
    switch (type) {
      case AT_SYSINFO_EHDR: out.sysinfoEhdr = value; break;
      case AT_BASE: out.base = value; break;
      case AT_PHDR: out.phdr = value; break;
      case AT_PHENT: out.phent = value; break;
      case AT_PHNUM: out.phnum = value; break;
      case AT_ENTRY: out.entry = value; break;
      case AT_PAGESZ: out.pagesz = value; break;
      case AT_HWCAP: out.hwcap = value; break;
      case AT_HWCAP2: out.hwcap2 = value; break;
      case AT_SECURE: out.secure = value; break;
      case AT_EXECFN: out.execfn = value; break;
      case AT_RANDOM: out.random = value; break;
      default: break;
    }
  }
  return out;
}

/** Memory accounting of one mapping from /proc/PID/smaps; sizes in bytes. */
export interface SmapsEntry {
  mapping: Mapping;
  size: number;
  rss: number;
  pss: number;
  sharedClean: number;
  sharedDirty: number;
  privateClean: number;
  /**
   * Dirty pages mapped only here. Caveat: a page-cache page of a file that was just written (and
   * not yet written back) also counts, so for code use `anonymous` as the "modified" signal.
   */
  privateDirty: number;
  referenced: number;
  /**
   * Anonymous pages. In a private file mapping these are copy-on-write copies: for a code
   * mapping, non-zero means the code was written (through /proc/PID/mem, or mprotect + store).
   */
  anonymous: number;
  swap: number;
  /** Every "Key: N kB" field converted to bytes. */
  fields: Record<string, number>;
  /** The VmFlags two-letter codes (rd, wr, ex, mr, mw, me, ...). */
  vmFlags: string[];
}

/** Parses /proc/PID/smaps. */
export function parseSmaps(text: string, pid?: number): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  let cur: SmapsEntry | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    // Header lines start with a hex address followed by '-'; field lines with a capitalised key.
    if (/^[0-9a-f]+-/.test(line)) {
      cur = {
        mapping: parseMapsLine(line, pid),
        size: 0, rss: 0, pss: 0, sharedClean: 0, sharedDirty: 0, privateClean: 0, privateDirty: 0,
        referenced: 0, anonymous: 0, swap: 0, fields: {}, vmFlags: [],
      };
      out.push(cur);
      continue;
    }
    if (!cur) throw bad('/proc/PID/smaps (field before header)', line);
    const i = line.indexOf(':');
    if (i <= 0) throw bad('/proc/PID/smaps line', line);
    const key = line.slice(0, i);
    const val = line.slice(i + 1).trim();
    if (key === 'VmFlags') {
      cur.vmFlags = val === '' ? [] : val.split(/\s+/);
      continue;
    }
    const m = /^(\d+)(?: kB)?$/.exec(val);
    if (!m) continue; // e.g. THPeligible / ProtectionKey: plain numbers handled above; others ignored.
    const n = Number(m[1]) * (val.endsWith('kB') ? 1024 : 1);
    cur.fields[key] = n;
  }
  for (const e of out) {
    const f = e.fields;
    e.size = f.Size ?? 0;
    e.rss = f.Rss ?? 0;
    e.pss = f.Pss ?? 0;
    e.sharedClean = f.Shared_Clean ?? 0;
    e.sharedDirty = f.Shared_Dirty ?? 0;
    e.privateClean = f.Private_Clean ?? 0;
    e.privateDirty = f.Private_Dirty ?? 0;
    e.referenced = f.Referenced ?? 0;
    e.anonymous = f.Anonymous ?? 0;
    e.swap = f.Swap ?? 0;
  }
  return out;
}
