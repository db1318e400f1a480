/**
 * The finding model of the guard: what `hotpatch verify` prints and what `hotpatch guard` logs
 * and reacts to. The structure codes are the table of protected structures in design.md.
 */

/** Codes of the protected structures (design.md, "Guard: protected structures"). */
export const STRUCTURE_MODULE_CODE = 0;
export const STRUCTURE_MODULE_RODATA = 1;
export const STRUCTURE_RELRO = 2;
export const STRUCTURE_IMPORTS = 3;
export const STRUCTURE_EXPORTS = 4;
export const STRUCTURE_INJECTED_CODE = 5;
export const STRUCTURE_MODULE_LIST = 6;
export const STRUCTURE_SIGNAL_HANDLERS = 7;
export const STRUCTURE_CREDENTIALS = 8;
export const STRUCTURE_VDSO = 9;
export const STRUCTURE_SANCTIONED_PATCHES = 10;

export type StructureCode = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10;

/** Every structure code, in table order. */
export const ALL_STRUCTURES: readonly StructureCode[] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/** Stable names of the structures, as printed in findings (`structure` field). */
export const STRUCTURE_NAMES: Readonly<Record<StructureCode, string>> = {
  0: 'module code',
  1: 'module read-only data',
  2: 'relocated read-only data (RELRO)',
  3: 'import table (GOT/PLT)',
  4: 'export table',
  5: 'injected executable memory',
  6: 'module list',
  7: 'signal handlers',
  8: 'credentials and capabilities',
  9: 'vDSO',
  10: 'sanctioned patches',
};

export type Severity = 'info' | 'low' | 'medium' | 'high' | 'critical';

export const SEVERITIES: readonly Severity[] = ['info', 'low', 'medium', 'high', 'critical'];

/** Orders severities: `severityRank('critical') > severityRank('info')`. */
export function severityRank(s: Severity): number {
  return SEVERITIES.indexOf(s);
}

/**
 * Short, stable tag saying what kind of deviation a finding is (policies and tests match on it):
 * - `modified`: bytes differ from the expected state (generic);
 * - `inline-hook`: code starts with a jump/call/push-ret/mov-jmp that was not in the file;
 * - `breakpoint`: INT3 while the process is traced or a uprobe is registered (benign modifier);
 * - `file-changed`: the mapped file differs from its first-seen identity or its package checksum;
 * - `got-hook`: an import slot points somewhere the dynamic linker would not bind it;
 * - `ld-preload`: an import slot is bound to a library preloaded by LD_PRELOAD (info), or such a
 *   library interposes C library symbols (medium; high when no LD_PRELOAD names it);
 * - `preload-file`: an import slot is bound to a library from /etc/ld.so.preload, or such a
 *   library is in the lookup scope (medium);
 * - `ld-audit`: an rtld-audit library (LD_AUDIT, or a loaded module exporting `la_version`) sees
 *   and may redirect every symbol binding (medium);
 * - `pointer-hook`: a function pointer the module's relocations initialise in writable data now
 *   leads outside module code (high);
 * - `file-vtable`: a stdio FILE object's vtable pointer lies outside the C library's
 *   `__libc_IO_vtables` section (high);
 * - `forged-link-map`: the dynamic linker's module list disagrees with the files (an l_name that
 *   names another file than the one mapped, start-up modules out of DT_NEEDED order);
 * - `anonymous-code`, `memfd-code`, `deleted-code`, `wx-memory`: injected executable memory;
 * - `hidden-module`: an ELF image is mapped but absent from the dynamic linker's link_map;
 * - `unlisted-module` : link_map names a module that is not mapped;
 * - `handler-outside-module`: a signal handler lies outside module code;
 * - `credentials-changed`, `effective-root`, `capabilities-gained`, `nonewprivs-cleared`,
 *   `seccomp-disabled`: credential changes;
 * - `vdso-modified`;
 * - `patch-signature`, `patch-modified`, `patch-site-modified`, `patch-record`: sanctioned patch
 *   problems (`patch-site-modified`: a site lost its signed jump; `restore` writes it back);
 * - `patch-untrusted`: a site of an intact patch that is unsigned or signed by a key that is not
 *   trusted (one finding per site, named by the patched function; `restore` removes the patch
 *   through the engine when trusted signers are configured);
 * - `non-elf-code` (5): an executable mapping of a file that is not ELF (raw code from a file);
 * - `headerless-elf` (5): an ELF file mapped executable without its first page (no ELF header
 *   mapped at file offset 0): mapped by hand, not a module the verifier can compare;
 * - `file-written` (0): a module file (no package vouches for it) was written after the process
 *   started or after the guard first saw it mapped: memory equals the file, the file is not
 *   what was loaded;
 * - `untrusted-path` (6): a module's file or a directory on its path is writable by someone other
 *   than root and the process' user, or it was loaded from a world-writable directory;
 * - `late-module-thread` (6): a module no package owns, loaded after start-up, runs a thread;
 * - `foreign-tracer` (7): a thread of the process is traced (ptrace) by a process other than
 *   hotpatch: it gets every trap and signal first and can hook code with debug registers;
 * - `debug-register` (7): a hardware breakpoint (DR0–DR3 armed in DR7) in a thread nobody traces;
 * - `unverifiable`: a structure could not be checked (e.g. text relocations, unreadable memory).
 */
/** Every finding kind (policies' `allow[].kind` is checked against this list). */
export const FINDING_KINDS = [
  'modified',
  'patch-site-modified',
  'inline-hook',
  'breakpoint',
  'file-changed',
  'got-hook',
  'ld-preload',
  'preload-file',
  'ld-audit',
  'pointer-hook',
  'file-vtable',
  'forged-link-map',
  'anonymous-code',
  'memfd-code',
  'deleted-code',
  'wx-memory',
  'hidden-module',
  'unlisted-module',
  'handler-outside-module',
  'credentials-changed',
  'effective-root',
  'capabilities-gained',
  'nonewprivs-cleared',
  'seccomp-disabled',
  'vdso-modified',
  'patch-signature',
  'patch-untrusted',
  'patch-modified',
  'patch-record',
  'non-elf-code',
  'headerless-elf',
  'file-written',
  'untrusted-path',
  'late-module-thread',
  'foreign-tracer',
  'debug-register',
  'unverifiable',
] as const;

export type FindingKind = (typeof FINDING_KINDS)[number];

/** One deviation from the expected state of a protected structure. */
export interface Finding {
  pid: number;
  code: StructureCode;
  /** `STRUCTURE_NAMES[code]`. */
  structure: string;
  kind: FindingKind;
  /** Path of the module (or mapping) concerned, or null when the finding is about the process. */
  module: string | null;
  /**
   * Link-time address inside `module` (run-time address minus the module's load bias; for PIE
   * executables and libraries this is the offset from the load base), or the offset inside the
   * mapping for memory that belongs to no module. Null when not about a location.
   */
  offset: bigint | null;
  /** Run-time address in the process, when about a location. */
  address: bigint | null;
  /** Nearest symbol as `name+0xOFF`, or null. */
  symbol: string | null;
  expected: Uint8Array | null;
  actual: Uint8Array | null;
  severity: Severity;
  detail: string;
  /** Decoded instructions (Intel syntax) of the expected and actual code, for code findings. */
  instructions?: { expected: string[]; actual: string[] };
  /** Where a hook or a pointer leads: "module+0xOFF (symbol)" or "anonymous memory at 0x...". */
  destination?: string;
  /** The hotpatch patch a structure-10 finding is about (its id in the in-process record). */
  patchId?: string;
}

/** Fields every finding needs; the rest default to null. */
export type FindingInput = Pick<Finding, 'pid' | 'code' | 'kind' | 'severity' | 'detail'> &
  Partial<Omit<Finding, 'pid' | 'code' | 'kind' | 'severity' | 'detail' | 'structure'>>;

/** Builds a finding, filling `structure` from the code and nulls for what is not given. */
export function makeFinding(f: FindingInput): Finding {
  const out: Finding = {
    pid: f.pid,
    code: f.code,
    structure: STRUCTURE_NAMES[f.code],
    kind: f.kind,
    module: f.module ?? null,
    offset: f.offset ?? null,
    address: f.address ?? null,
    symbol: f.symbol ?? null,
    expected: f.expected ?? null,
    actual: f.actual ?? null,
    severity: f.severity,
    detail: f.detail,
  };
  if (f.instructions !== undefined) out.instructions = f.instructions;
  if (f.destination !== undefined) out.destination = f.destination;
  if (f.patchId !== undefined) out.patchId = f.patchId;
  return out;
}

/** The JSON form of a finding (shape of cli.md's `verify`, plus `kind`, `address`, ...). */
export interface FindingJson {
  pid: number;
  code: StructureCode;
  structure: string;
  kind: FindingKind;
  module: string | null;
  offset: string | null;
  address: string | null;
  symbol: string | null;
  expected: string | null;
  actual: string | null;
  severity: Severity;
  detail: string;
  instructions?: { expected: string[]; actual: string[] };
  destination?: string;
  patchId?: string;
}

function hexBytes(b: Uint8Array | null): string | null {
  return b === null ? null : Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function hexAddr(v: bigint | null): string | null {
  return v === null ? null : `0x${v.toString(16)}`;
}

/** Converts a finding to its JSON form (addresses as "0x..." strings, bytes as hex strings). */
export function findingToJson(f: Finding): FindingJson {
  const out: FindingJson = {
    pid: f.pid,
    code: f.code,
    structure: f.structure,
    kind: f.kind,
    module: f.module,
    offset: hexAddr(f.offset),
    address: hexAddr(f.address),
    symbol: f.symbol,
    expected: hexBytes(f.expected),
    actual: hexBytes(f.actual),
    severity: f.severity,
    detail: f.detail,
  };
  if (f.instructions !== undefined) out.instructions = f.instructions;
  if (f.destination !== undefined) out.destination = f.destination;
  if (f.patchId !== undefined) out.patchId = f.patchId;
  return out;
}

/** One human-readable line for a finding (logs, the non-JSON `verify` output). */
export function formatFinding(f: Finding): string {
  const where = [
    f.module ?? '',
    f.offset !== null ? `+0x${f.offset.toString(16)}` : '',
    f.symbol !== null ? ` (${f.symbol})` : '',
  ].join('');
  const parts = [`pid ${f.pid}`, `[${f.code} ${f.structure}]`, f.severity.toUpperCase(), f.kind];
  if (where !== '') parts.push(where);
  parts.push(f.detail);
  if (f.instructions !== undefined && f.instructions.actual.length > 0) parts.push(`now: ${f.instructions.actual.join('; ')}`);
  if (f.destination !== undefined) parts.push(`→ ${f.destination}`);
  return parts.join(' ');
}

/**
 * Identity of a finding for de-duplication and re-checks: the same deviation seen twice has the
 * same key (the bytes are part of it, so a changing hook is a new finding).
 */
export function findingKey(f: Finding): string {
  return [f.pid, f.code, f.kind, f.module ?? '', f.offset?.toString(16) ?? '', f.address?.toString(16) ?? '', hexBytes(f.actual) ?? ''].join('|');
}
