/**
 * Call frame information computed from the code, for new code that carries none (a C patch: the
 * builder only carries `.eh_frame` for programs that unwind, src/patch/builder/unwind.ts). Without
 * it gdb falls back to its prologue analysis, which expects `push rbp` at the entry and so
 * misreads every function built with -fpatchable-function-entry (it starts with a 2-byte NOP).
 *
 * How: the CFA (the caller's rsp before the call) is tracked through every path of the function
 * from its entry (CFA = rsp+8, return address at CFA-8): push/pop, `sub`/`add rsp, imm`,
 * `mov rbp, rsp` (CFA becomes rbp-based), `leave`, and the pushes and pops of callee-saved
 * registers. Anything else that changes the CFA register, or two paths that meet with different
 * states, gives up on the function (no FDE: gdb guesses as before) — wrong CFI is worse than none.
 * Instructions no path reaches keep the row before them.
 *
 * Output: `.debug_frame` (DWARF 4 §6.4.1; absolute addresses, so no pointer encoding), one CIE
 * (version 1, code alignment 1, data alignment -8, return address column 16) and an FDE per
 * function. x86-64 DWARF register numbers (psABI §3.6.2): rbx 3, rbp 6, rsp 7, r12–r15 12–15, RA 16.
 */
import { decodeFunction, type Insn } from '../../x86/index.js';

const DW_CFA_advance_loc4 = 0x04;
const DW_CFA_def_cfa = 0x0c;
const DW_CFA_offset = 0x80;
const DW_CFA_restore = 0xc0;
const DW_CFA_nop = 0x00;
const REG_RSP = 7;
const REG_RBP = 6;
const REG_RA = 16;
const CALLEE_SAVED: Record<string, number> = { rbx: 3, rbp: 6, r12: 12, r13: 13, r14: 14, r15: 15 };

/** The CFA rule and saved registers before an instruction. */
interface FrameState {
  reg: typeof REG_RSP | typeof REG_RBP;
  /** CFA = reg + offset. */
  offset: number;
  /** CFA - rsp while it is known (always in an rsp-based frame; after `and rsp` in an rbp-based one it is not). */
  rsp: number | undefined;
  /** DWARF register → its save slot at CFA - n. */
  saved: ReadonlyMap<number, number>;
}

/** The same CFI row (rsp aside: in an rbp-based frame it is not part of the rule). */
function sameRow(a: FrameState, b: FrameState): boolean {
  if (a.reg !== b.reg || a.offset !== b.offset || a.saved.size !== b.saved.size) return false;
  for (const [r, n] of a.saved) if (b.saved.get(r) !== n) return false;
  return true;
}

/** The register a `push REG` / `pop REG` names, when it is callee-saved. */
function calleeSaved(i: Insn): number | undefined {
  const m = /^(?:push|pop) ([a-z0-9]+)$/.exec(i.text);
  return m ? CALLEE_SAVED[m[1]!] : undefined;
}

/** rsp moved by `delta` bytes (positive: towards lower addresses). */
function moveRsp(s: FrameState, delta: number): FrameState | null {
  if (s.rsp === undefined) return s.reg === REG_RSP ? null : s;
  const rsp = s.rsp + delta;
  return s.reg === REG_RSP ? { ...s, rsp, offset: rsp } : { ...s, rsp };
}

/** The state after `i`, or null when `i` changes the frame in a way we do not follow. */
function step(s: FrameState, i: Insn): FrameState | null {
  const dest = i.dest;
  switch (i.mnemonic) {
    case 'push':
    case 'pushfq': {
      const after = moveRsp(s, 8);
      const r = i.mnemonic === 'push' ? calleeSaved(i) : undefined;
      if (after && r !== undefined && !s.saved.has(r) && after.rsp !== undefined) return { ...after, saved: new Map([...s.saved, [r, after.rsp]]) };
      return after;
    }
    case 'pop':
    case 'popfq': {
      const r = i.mnemonic === 'pop' ? calleeSaved(i) : undefined;
      const saved = new Map(s.saved);
      if (r !== undefined) saved.delete(r);
      if (r === REG_RBP && s.reg === REG_RBP) {
        // rbp defined the CFA: from here on it is rsp-based again (only when rsp is known).
        if (s.rsp === undefined) return null;
        return { reg: REG_RSP, offset: s.rsp - 8, rsp: s.rsp - 8, saved };
      }
      const after = moveRsp(s, -8);
      return after && { ...after, saved };
    }
    case 'leave': {
      // mov rsp, rbp; pop rbp
      if (s.reg !== REG_RBP) return null;
      const saved = new Map(s.saved);
      saved.delete(REG_RBP);
      return { reg: REG_RSP, offset: s.offset - 8, rsp: s.offset - 8, saved };
    }
    case 'sub':
    case 'add': {
      if (dest !== 'rsp') break;
      const imm = /^(?:sub|add) rsp, (0x[0-9a-f]+|\d+)$/.exec(i.text);
      if (!imm) return s.reg === REG_RSP ? null : { ...s, rsp: undefined };
      const n = Number(imm[1]);
      return moveRsp(s, i.mnemonic === 'sub' ? n : -n);
    }
    case 'mov':
      if (i.text === 'mov rbp, rsp' && s.rsp !== undefined) return { ...s, reg: REG_RBP, offset: s.rsp };
      break;
    default:
      break;
  }
  // Any other write of rsp or of the CFA register.
  if (dest === 'rsp') return s.reg === REG_RSP ? null : { ...s, rsp: undefined };
  if (dest === 'rbp' && s.reg === REG_RBP) return null;
  return s;
}

/** The state before each instruction (undefined: no path reaches it), or null when we give up. */
function analyse(insns: readonly Insn[]): (FrameState | undefined)[] | null {
  const at = new Map<bigint, number>(insns.map((x, n) => [x.address, n]));
  const states: (FrameState | undefined)[] = new Array(insns.length);
  const work: [number, FrameState][] = [[0, { reg: REG_RSP, offset: 8, rsp: 8, saved: new Map() }]];
  while (work.length > 0) {
    const [n, arrived] = work.pop()!;
    let s = arrived;
    const known = states[n];
    if (known) {
      if (!sameRow(known, s)) return null;
      if (known.rsp === s.rsp || known.rsp === undefined) continue;
      // An rbp-based frame reached with two rsp depths: rsp is unknown there (propagated again, once).
      s = { ...known, rsp: undefined };
    }
    states[n] = s;
    const i = insns[n]!;
    if (i.invalid) return null;
    const after = step(s, i);
    if (after === null) return null;
    const next = (k: number | undefined): void => {
      if (k !== undefined) work.push([k, after]);
    };
    if (i.flow === 'next' || i.flow === 'call' || i.flow === 'indirect-call' || i.flow === 'interrupt' || i.flow === 'conditional-branch') next(n + 1 < insns.length ? n + 1 : undefined);
    // A branch leaving the function (a tail call, an island's jump) ends the path.
    if ((i.flow === 'branch' || i.flow === 'conditional-branch') && i.branchTarget !== undefined) next(at.get(i.branchTarget));
  }
  return states;
}

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** CFA instructions that turn row `from` into row `to`. */
function transition(from: FrameState, to: FrameState): number[] {
  const out: number[] = [];
  if (from.reg !== to.reg || from.offset !== to.offset) out.push(DW_CFA_def_cfa, ...uleb(to.reg), ...uleb(to.offset));
  for (const [r] of from.saved) if (!to.saved.has(r)) out.push(DW_CFA_restore | r);
  for (const [r, n] of to.saved) if (from.saved.get(r) !== n) out.push(DW_CFA_offset | r, ...uleb(n / 8));
  return out;
}

/** The CFA program of one function (after the CIE's initial rule), or undefined when we give up. */
export function functionCfi(code: Uint8Array, address: bigint): Uint8Array | undefined {
  const insns = decodeFunction(code, address, { registers: true });
  if (insns.length === 0) return undefined;
  const states = analyse(insns);
  if (!states) return undefined;
  let row: FrameState = states[0]!;
  let rowAt = address;
  const out: number[] = [];
  insns.forEach((i, n) => {
    const s = states[n];
    if (!s || sameRow(s, row)) return;
    if (s.offset < 8 || s.offset % 8 !== 0 || [...s.saved.values()].some((v) => v % 8 !== 0)) return; // not a frame we describe
    const delta = Number(i.address - rowAt);
    out.push(DW_CFA_advance_loc4, delta & 0xff, (delta >>> 8) & 0xff, (delta >>> 16) & 0xff, (delta >>> 24) & 0xff, ...transition(row, s));
    row = s;
    rowAt = i.address;
  });
  return Uint8Array.from(out);
}

function pad8(bytes: number[]): number[] {
  while (bytes.length % 8 !== 4) bytes.push(DW_CFA_nop); // + the 4-byte length field = a multiple of 8
  return bytes;
}

function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function u64(n: bigint): number[] {
  const out: number[] = [];
  for (let k = 0n; k < 64n; k += 8n) out.push(Number((n >> k) & 0xffn));
  return out;
}

/** A function to describe. */
export interface CfiFunction {
  address: bigint;
  code: Uint8Array;
}

/**
 * `.debug_frame` for `functions` (those we cannot follow are left out); undefined when none is
 * described. Returns the section bytes and how many functions it covers.
 */
export function synthesizeDebugFrame(functions: readonly CfiFunction[]): { bytes: Uint8Array; fdes: number } | undefined {
  // CIE: id 0xffffffff, version 1, augmentation "", code align 1, data align -8 (sleb 0x78),
  // RA column 16; initial rule CFA = rsp+8, RA at CFA-8.
  const cieBody = pad8([...u32(0xffffffff), 1, 0, 1, 0x78, REG_RA, DW_CFA_def_cfa, REG_RSP, 8, DW_CFA_offset | REG_RA, 1]);
  const out: number[] = [...u32(cieBody.length), ...cieBody];
  let fdes = 0;
  for (const f of functions) {
    const program = functionCfi(f.code, f.address);
    if (!program) continue;
    const body = pad8([...u32(0), ...u64(f.address), ...u64(BigInt(f.code.length)), ...program]); // CIE pointer: offset 0
    out.push(...u32(body.length), ...body);
    fdes++;
  }
  return fdes === 0 ? undefined : { bytes: Uint8Array.from(out), fdes };
}
