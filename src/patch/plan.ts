/**
 * The patch plan: the plain data that passes from the builder (two ELF builds → plan) through the
 * package (plan + signature on disk) to the engine (plan + pid → patched process).
 *
 * Address spaces are named: a `vaddr` is a link-time virtual address of the TARGET (old, running)
 * build as written in its ELF file; the engine adds the module's load bias to get a run-time address.
 * Offsets inside new code or data are plain numbers.
 */

/** Identity of the module (executable or shared library) a patch applies to. */
export interface TargetIdentity {
  /** GNU build-id of the running (old) build, lowercase hex. */
  buildId: string;
  /** File name of the target (basename, e.g. "server" or "libfoo.so.1"). */
  name: string;
  /** Size in bytes of the target file. */
  size: number;
}

/** Where a relocation in new code or data points. */
export type RelocationTarget =
  /** An address inside the running target module, as a link-time vaddr of the old build. */
  | { kind: 'module'; vaddr: bigint }
  /**
   * A symbol resolved at apply time: first in the target module (`.symtab`, then `.dynsym`; a
   * `file` restricts the search to local symbols of that STT_FILE), then in the other loaded
   * modules' `.dynsym` (honouring `version`).
   */
  | { kind: 'symbol'; name: string; version?: string; file?: string }
  /** Inside this patch: the code of `functions[index]` (part "function") or `data[index]`. */
  | { kind: 'local'; part: 'function' | 'data'; index: number; offset: number };

/**
 * Relocation kinds, named after the ELF relocation they behave like. S = target address,
 * A = addend, P = run-time address of the relocated field.
 * - `pc32`:   int32 at offset = S + A - P (R_X86_64_PC32 / PLT32 / GOTPCREL to an existing slot)
 * - `abs64`:  uint64 = S + A (R_X86_64_64)
 * - `abs32`:  uint32 = S + A, must fit zero-extended (R_X86_64_32)
 * - `abs32s`: int32 = S + A, must fit sign-extended (R_X86_64_32S)
 */
export type RelocationType = 'pc32' | 'abs64' | 'abs32' | 'abs32s';

export interface Relocation {
  /** Offset of the relocated field inside the code or data it belongs to. */
  offset: number;
  type: RelocationType;
  target: RelocationTarget;
  addend: bigint;
}

/**
 * How the old function's entry is switched to the new code.
 * - `padded`: `siteVaddr` is the start of the padding; `switchVaddr` the 2-byte instruction the
 *   short jump replaces (the entry, or entry + 4 after an `endbr64`). The padding receives
 *   `jmp rel32` to the new code, then the switch receives `jmp short` back into the padding.
 * - `plain`: a 5-byte `jmp rel32` at `siteVaddr` (entry, or entry + 4 after `endbr64`).
 */
export interface EntryPlan {
  kind: 'padded' | 'plain';
  siteVaddr: bigint;
  switchVaddr: bigint;
  /** The exact bytes the site holds in the running build, from `siteVaddr` on (padding + switch, or 5 bytes). */
  expected: Uint8Array;
}

export interface PatchFunction {
  /** Symbol name of the function in the target. */
  name: string;
  /** For a local (static) symbol: the STT_FILE it belongs to, so same-named statics stay apart. */
  file?: string;
  /** Link-time address and size of the old function in the target build. */
  vaddr: bigint;
  size: number;
  /** SHA-256 (hex) of the old function's bytes as in the target file. */
  oldHash: string;
  entry: EntryPlan;
  /** The new function's machine code, to be placed in the arena and relocated. */
  code: Uint8Array;
  /** Required alignment of the new code in the arena (power of two). */
  align: number;
  relocations: Relocation[];
}

/**
 * Data carried in the patch: new string literals, constant and jump tables (read-only), and the
 * variables a fix adds (`writable`: counters, flags, locks, tables the new code changes).
 */
export interface PatchData {
  /** A readable name for diagnostics (e.g. ".rodata.str1.1+0x40" or "jump table of parse"). */
  name: string;
  /** The initial contents (all zero for a variable of `.bss`). */
  bytes: Uint8Array;
  align: number;
  relocations: Relocation[];
  /**
   * A variable: placed in the patch's writable data area (read-write, never executable), shared
   * by every thread, kept while the patch is applied or its code may still run, freed with it.
   */
  writable?: boolean;
}

/**
 * Unwind information of the new code, so that C++ exceptions (and debuggers) unwind through it:
 * the engine registers the `.eh_frame` image with the target's unwinder on apply and unregisters
 * it on remove (src/patch/engine/unwind.ts). Its pointers (pc ranges, personality, LSDA) are
 * ordinary relocations of the data item; the LSDAs (catch clauses) are data items of their own.
 */
export interface PatchUnwind {
  /** Index in `data` of the `.eh_frame` image: CIEs, FDEs, then a zero terminator. */
  ehFrame: number;
}

/** Everything the engine needs to apply and to remove a patch. */
export interface PatchPlan {
  target: TargetIdentity;
  functions: PatchFunction[];
  data: PatchData[];
  /** Absent when the new code has no unwind information (C without -fexceptions/-funwind-tables...). */
  unwind?: PatchUnwind;
}
