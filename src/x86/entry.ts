/**
 * Classification of a function entry: how can the engine switch it to new code?
 *
 * What gcc 12 emits (checked with objdump on x86-64, -O2):
 * - `-fpatchable-function-entry=7,5`: five `90` before the label, `90 90` at the entry; with
 *   `-fcf-protection`, `f3 0f 1e fa` (endbr64) comes FIRST at the entry and the two NOPs follow it.
 *   `=16,14` is the same with fourteen `90` before.
 * - `__attribute__((ms_hook_prologue))`: 32 bytes of `cc` (int3) before the label and
 *   `48 8d a4 24 00 00 00 00` (`lea rsp, [rsp+0x0]`) at the entry; with `-fcf-protection` the
 *   endbr64 comes AFTER that lea.
 * - plain `-O2`: alignment padding of multi-byte NOPs (`66 0f 1f 44 00 00`, `66 66 2e 0f 1f 84 ..`)
 *   or `cc` runs after the previous function's last instruction.
 *
 * Padding choice (decided here, documented for the engine): a run of NOP/INT3 instructions that
 * ends exactly at the entry is usable for the 5-byte `jmp rel32` when
 *  - it is at least 5 bytes long and, if the caller knows where the previous function ends
 *    (`paddingFloor`), lies entirely after it; and
 *  - no branch the caller knows of (`externalBranchTargets`) lands strictly inside the site.
 * Compilers place inter-function alignment padding after a terminal instruction (ret/jmp/noreturn
 * call) and never branch into it; only hand-written assembly can fall through into NOP padding. For
 * that case the site starts on an instruction boundary of the NOP run, so a fall-through reaches the
 * `jmp rel32` at its first byte and goes to the new function, which is what falling into the entry
 * would have done anyway. INT3 padding is never executed at all. For -fpatchable-function-entry the
 * padding is reserved for exactly this use.
 */
import { decodeFunction, iterateInstructions, branchesInto, type Insn } from './decode.js';
import { JMP_REL32_SIZE, JMP_SHORT_SIZE } from './encode.js';

/** How the entry can be switched. */
export type EntryKind = 'padded' | 'plain' | 'too-small' | 'undecodable';

/**
 * The recognised form:
 * - `patchable-function-entry`: gcc/clang `-fpatchable-function-entry=N,M`, N > M >= 5;
 * - `ms-hook-prologue`: gcc `__attribute__((ms_hook_prologue))`;
 * - `padding`: >= 5 bytes of NOP/INT3 alignment padding and a first instruction of >= 2 bytes;
 * - `plain`: no usable padding; a 5-byte `jmp rel32` overwrites the first instructions;
 * - `too-small` / `undecodable`: cannot be switched.
 */
export type EntryForm = 'patchable-function-entry' | 'ms-hook-prologue' | 'padding' | 'plain' | 'too-small' | 'undecodable';

export interface EntryInput {
  /** Address of the entry (any address space; results are in the same one). */
  address: bigint;
  /** The function's bytes (its whole symbol size). */
  code: Uint8Array;
  /** Up to 16 bytes immediately before the entry (fewer at the start of a section). */
  before?: Uint8Array;
  /** Lowest address padding may start at, e.g. the end of the previous function's symbol. */
  paddingFloor?: bigint;
  /** Branch targets known from other code (e.g. the whole module); sites containing one are refused. */
  externalBranchTargets?: ReadonlySet<bigint>;
  /**
   * Decode the whole function to find branches into the overwritten bytes (default true). Turn off
   * for a quick scan; `branchesIntoSite` is then empty and `checkedBranches` false.
   */
  checkBranches?: boolean;
}

export interface EntryClass {
  kind: EntryKind;
  form: EntryForm;
  entry: bigint;
  /** An `endbr64` at the entry (the switch then sits at entry + 4). */
  endbr64: boolean;
  /**
   * Where the engine writes first: padded → the `jmp rel32` in the padding; plain → the 5-byte jump
   * (entry, or entry + 4 after endbr64). Undefined for too-small/undecodable.
   */
  siteAddress?: bigint;
  /**
   * padded → the 2 bytes that become `jmp short siteAddress` (one instruction, or two 1-byte NOPs
   * for -fpatchable-function-entry: a thread stopped between them must be waited for like any IP
   * inside overwritten bytes); plain → = siteAddress.
   */
  switchAddress?: bigint;
  /** Bytes of padding from siteAddress to the entry (0 for plain). */
  paddingLength: number;
  /** All NOP/INT3 padding bytes found before the entry (within `before` and `paddingFloor`). */
  paddingAvailable: number;
  /** The padding is only INT3, so it can never be executed. */
  paddingInt3Only: boolean;
  /**
   * The bytes the site holds now, from siteAddress to the end of what the engine overwrites
   * (padding … switch + 2, or the 5 plain bytes): `EntryPlan.expected`.
   */
  expected?: Uint8Array;
  /** The instructions at the switch/plain site that the write covers, whole. */
  overwritten: Insn[];
  /** Direct branches inside the function that land strictly inside the overwritten entry bytes. */
  branchesIntoSite: bigint[];
  /** Whether `branchesIntoSite` is backed by decoding the whole function. */
  checkedBranches: boolean;
  /** The whole function decoded without invalid instructions (only when checkedBranches). */
  decodeComplete: boolean;
  /** Why the entry is not padded / cannot be switched, for reports. */
  reason?: string;
}

const MS_HOOK_LEA = [0x48, 0x8d, 0xa4, 0x24, 0x00, 0x00, 0x00, 0x00] as const;
const ENDBR64 = [0xf3, 0x0f, 0x1e, 0xfa] as const;

function startsWith(code: Uint8Array, at: number, pattern: readonly number[]): boolean {
  if (code.length - at < pattern.length) return false;
  for (let i = 0; i < pattern.length; i++) if (code[at + i] !== pattern[i]) return false;
  return true;
}

interface PaddingRun {
  /** Length of the longest NOP/INT3 run that ends at the entry. */
  length: number;
  /** Instruction boundaries of that run, as distances back from the entry (descending). */
  boundaries: number[];
  int3Only: boolean;
  /** How many whole single-byte `90` NOPs end the run (the -fpatchable-function-entry part). */
  trailingSingleNops: number;
}

const NO_PADDING: PaddingRun = { length: 0, boundaries: [], int3Only: false, trailingSingleNops: 0 };

/** Finds the longest run of whole NOP/INT3 instructions in `before` that ends exactly at its end. */
function findPadding(before: Uint8Array): PaddingRun {
  const n = before.length;
  if (n === 0) return NO_PADDING;
  const last = before[n - 1];
  // Fast reject: every NOP/INT3 form ends in 90, cc or 00 (the disp/modrm tail of 0f 1f /0).
  if (last !== 0x90 && last !== 0xcc && last !== 0x00) return NO_PADDING;
  for (let s = 0; s < n; s++) {
    const b0 = before[s];
    if (b0 !== 0x90 && b0 !== 0xcc && b0 !== 0x66 && b0 !== 0x0f && b0 !== 0x2e) continue;
    const boundaries: number[] = [];
    let ok = true;
    let int3Only = true;
    let end = s;
    for (const insn of iterateInstructions(before.subarray(s), 0n, { text: false })) {
      if (insn.invalid || !(insn.isNop || insn.isInt3)) {
        ok = false;
        break;
      }
      boundaries.push(n - end);
      if (!insn.isInt3) int3Only = false;
      end += insn.length;
    }
    if (ok && end === n) {
      // Alignment NOPs of the previous function may precede the pfe NOPs: count only the tail.
      let trailingSingleNops = 0;
      const starts = new Set(boundaries);
      while (starts.has(trailingSingleNops + 1) && before[n - trailingSingleNops - 1] === 0x90) trailingSingleNops++;
      return { length: n - s, boundaries, int3Only, trailingSingleNops };
    }
  }
  return NO_PADDING;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Decides how the entry at `input.address` can be switched to new code; see the module comment for
 * the forms and the padding rule.
 */
export function classifyEntry(input: EntryInput): EntryClass {
  const { address: entry, code } = input;
  let before = input.before ?? new Uint8Array(0);
  if (before.length > 16) before = before.subarray(before.length - 16);
  if (input.paddingFloor !== undefined && input.paddingFloor > entry - BigInt(before.length)) {
    const keep = input.paddingFloor >= entry ? 0 : Number(entry - input.paddingFloor);
    before = before.subarray(before.length - keep);
  }
  const checkBranches = input.checkBranches ?? true;

  const endbr64 = startsWith(code, 0, ENDBR64);
  const bodyOffset = endbr64 ? ENDBR64.length : 0;
  const body = entry + BigInt(bodyOffset);
  const bodySize = code.length - bodyOffset;

  const pad = findPadding(before);
  const result: EntryClass = {
    kind: 'too-small',
    form: 'too-small',
    entry,
    endbr64,
    paddingLength: 0,
    paddingAvailable: pad.length,
    paddingInt3Only: pad.int3Only,
    overwritten: [],
    branchesIntoSite: [],
    checkedBranches: false,
    decodeComplete: false,
  };

  // The first instructions at the switch point (enough to cover 5 bytes).
  const head: Insn[] = [];
  let covered = 0;
  for (const insn of iterateInstructions(code.subarray(bodyOffset), body, { text: true, maxInstructions: 5 })) {
    head.push(insn);
    covered += insn.length;
    if (insn.invalid || covered >= JMP_REL32_SIZE) break;
  }

  let whole: Insn[] | undefined;
  const internalBranches = (start: bigint, end: bigint): bigint[] => {
    if (!checkBranches) return [];
    whole ??= decodeFunction(code, entry, { text: false });
    result.checkedBranches = true;
    result.decodeComplete = whole.every((i) => !i.invalid);
    return branchesInto(whole, start, end).map((b) => b.from);
  };
  // Known branches may land on the site's first byte, the entry and the switch (all still run the
  // jump chain to the new code), never strictly inside the bytes that get overwritten.
  const externalInside = (start: bigint, end: bigint, allowed: readonly bigint[]): boolean => {
    const ext = input.externalBranchTargets;
    if (ext === undefined) return false;
    // Probe the few addresses of the site (at most 16 + 6 bytes) rather than walking a module-wide set.
    for (let a = start + 1n; a < end; a++) if (ext.has(a) && !allowed.includes(a)) return true;
    return false;
  };

  // Padded forms: find the 2-byte switch and a 5-byte site in the padding.
  const padded = (form: EntryForm, switchAt: bigint, switchInsns: Insn[]): boolean => {
    // Latest instruction boundary of the padding that leaves >= 5 bytes before the entry.
    let back = 0;
    for (const b of pad.boundaries) if (b >= JMP_REL32_SIZE) back = b;
    if (back === 0) return false;
    const site = entry - BigInt(back);
    // jmp short from the switch must reach the site: rel8 >= -128.
    if (site - (switchAt + BigInt(JMP_SHORT_SIZE)) < -128n) return false;
    if (externalInside(site, switchAt + BigInt(JMP_SHORT_SIZE), [entry, switchAt])) {
      result.reason = 'a known branch lands inside the padding site';
      return false;
    }
    result.kind = 'padded';
    result.form = form;
    result.siteAddress = site;
    result.switchAddress = switchAt;
    result.paddingLength = back;
    const switchEnd = Number(switchAt - entry) + JMP_SHORT_SIZE;
    result.expected = concat(before.subarray(before.length - back), code.subarray(0, switchEnd));
    result.overwritten = switchInsns;
    result.branchesIntoSite = internalBranches(switchAt + 1n, switchAt + BigInt(JMP_SHORT_SIZE));
    return true;
  };

  if (pad.length >= JMP_REL32_SIZE) {
    // (c) ms_hook_prologue: the lea sits at the entry itself (gcc puts endbr64 after it).
    if (startsWith(code, 0, MS_HOOK_LEA)) {
      const lea = decodeFunction(code.subarray(0, MS_HOOK_LEA.length), entry, { maxInstructions: 1 });
      if (padded('ms-hook-prologue', entry, lea)) return result;
    }
    // (b) -fpatchable-function-entry=N,M: single-byte NOPs before, >= 2 single-byte NOPs at the switch.
    if (
      pad.trailingSingleNops >= JMP_REL32_SIZE &&
      head.length >= 2 &&
      head[0]!.bytes.length === 1 &&
      head[0]!.bytes[0] === 0x90 &&
      head[1]!.bytes.length === 1 &&
      head[1]!.bytes[0] === 0x90
    ) {
      if (padded('patchable-function-entry', body, head.slice(0, 2))) return result;
    }
    // (a) alignment padding and a first instruction of >= 2 bytes.
    const first = head[0];
    if (first !== undefined && !first.invalid && first.length >= JMP_SHORT_SIZE) {
      if (padded('padding', body, [first])) return result;
    }
  }

  // Plain: a 5-byte jmp rel32 over the first instructions.
  const firstInvalid = head.find((i) => i.invalid);
  if (bodySize < JMP_REL32_SIZE) {
    result.reason = `only ${bodySize} byte(s) after the entry${endbr64 ? ' and its endbr64' : ''}: a 5-byte jump does not fit`;
    return result;
  }
  if (firstInvalid !== undefined || covered < JMP_REL32_SIZE) {
    result.kind = 'undecodable';
    result.form = 'undecodable';
    result.reason = `the instruction at 0x${(firstInvalid?.address ?? body).toString(16)} cannot be decoded`;
    return result;
  }
  if (externalInside(body, body + BigInt(JMP_REL32_SIZE), [])) {
    result.kind = 'too-small';
    result.form = 'too-small';
    result.reason = 'a known branch lands inside the first 5 bytes';
    return result;
  }
  result.kind = 'plain';
  result.form = 'plain';
  result.siteAddress = body;
  result.switchAddress = body;
  result.expected = code.slice(bodyOffset, bodyOffset + JMP_REL32_SIZE);
  result.overwritten = head;
  result.branchesIntoSite = internalBranches(body + 1n, body + BigInt(JMP_REL32_SIZE));
  if (pad.length > 0 && pad.length < JMP_REL32_SIZE) result.reason = `only ${pad.length} byte(s) of padding`;
  return result;
}
