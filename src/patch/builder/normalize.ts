/**
 * Normalisation of one function: decode it, find every field that holds an address (relative
 * branches and calls leaving the function, RIP-relative operands, absolute addresses kept by
 * --emit-relocs or, in non-PIE code, recognised by value), mask those fields, and describe what
 * they point to with build-independent references. Two builds of a function are the same when the
 * masked bytes, the references and their jump tables are the same: pure address shifts vanish.
 */
import { R_X86_64_32, R_X86_64_32S, R_X86_64_64, SHF_EXECINSTR, SHF_WRITE, STT_SECTION } from '../../elf/index.js';
import { decodeFunction, type Insn } from '../../x86/index.js';
import type { BuildImage, FunctionInfo, RefTarget } from './image.js';

/** How a field encodes its address. */
export type FieldKind = 'pc' | 'abs32' | 'abs32s' | 'abs64';

/** One address-holding field of a function. */
export interface CodeRef {
  /** Offset of the field from the function start. */
  off: number;
  size: number;
  kind: FieldKind;
  /** Offset of the end of the instruction (the base of a pc-relative field). */
  insnEnd: number;
  /** Offset of the instruction. */
  insnOff: number;
  /** The address the field designates in this build. */
  addr: bigint;
  target: RefTarget;
  /** This field points at `tables[table]`, a jump table of this function. */
  table?: number;
}

/** A switch jump table recognised from the dispatch code. */
export interface JumpTable {
  /** vaddr of the table in this build. */
  addr: bigint;
  /** 4: int32 offsets relative to the table (PIC); 8: absolute 64-bit addresses. */
  entrySize: 4 | 8;
  /** Where each entry goes, in this build. */
  targets: bigint[];
}

/** A function, normalised. */
export interface NormalFunction {
  fn: FunctionInfo;
  bytes: Uint8Array;
  /** `bytes` with every address field zeroed. */
  masked: Uint8Array;
  refs: CodeRef[];
  tables: JumpTable[];
  instructionCount: number;
  /** Problems that make the function impossible to relocate with confidence. */
  invalidAt?: bigint;
  midInstructionJump?: { from: bigint; to: bigint };
}

const I32_MIN = -(1n << 31n);

function readInt(bytes: Uint8Array, off: number, size: number): bigint {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (size === 4) return BigInt(dv.getInt32(off, true));
  if (size === 8) return dv.getBigInt64(off, true);
  return 0n;
}

function isReadOnlyData(img: BuildImage, addr: bigint): boolean {
  const s = img.sectionAt(addr);
  return s !== undefined && (s.flags & (SHF_WRITE | SHF_EXECINSTR)) === 0;
}

/** Finds `cmp x, imm` + `ja`/`jae` guarding a switch, searching back from `from`; returns the entry count. */
function switchBound(insns: Insn[], from: number): number | undefined {
  for (let i = from; i >= 1 && i >= from - 16; i--) {
    const j = insns[i]!;
    if (j.flow !== 'conditional-branch') continue;
    const cmp = insns[i - 1]!;
    if (cmp.mnemonic !== 'cmp' || !cmp.immediates || cmp.immediates.length === 0) return undefined;
    const imm = cmp.immediates[0]!;
    if (imm < 0n || imm > 65536n) return undefined;
    if (j.mnemonic === 'ja' || j.mnemonic === 'jbe') return Number(imm) + 1;
    if (j.mnemonic === 'jae' || j.mnemonic === 'jb') return Number(imm);
    return undefined;
  }
  return undefined;
}

/** Decodes and normalises a function of `img`. */
export function normalizeFunction(img: BuildImage, fn: FunctionInfo): NormalFunction {
  const bytes = img.functionBytes(fn);
  const masked = bytes.slice();
  const insns = decodeFunction(bytes, fn.vaddr, { text: false, registers: true });
  const out: NormalFunction = { fn, bytes, masked, refs: [], tables: [], instructionCount: insns.length };
  const starts = new Set<bigint>();
  for (const i of insns) starts.add(i.address);
  const inside = (a: bigint) => a >= fn.vaddr && a < fn.end;
  const mask = (off: number, size: number) => masked.fill(0, off, off + size);
  const addRef = (ins: Insn, field: { offset: number; size: number }, kind: FieldKind, addr: bigint, table?: number) => {
    const insnOff = Number(ins.address - fn.vaddr);
    const ref: CodeRef = {
      off: insnOff + field.offset,
      size: field.size,
      kind,
      insnEnd: insnOff + ins.length,
      insnOff,
      addr,
      target: img.symbolize(addr),
    };
    if (table !== undefined) ref.table = table;
    out.refs.push(ref);
    mask(ref.off, ref.size);
  };

  // Jump tables first, so that the instruction pointing at one is recognised below.
  const tableAt = new Map<bigint, number>();
  const sameGroup = (t: bigint): boolean => {
    if (inside(t)) return starts.has(t);
    const g = img.functionAt(t);
    return g !== undefined && g.name.startsWith(`${fn.name}.`);
  };
  // Every address the function designates: a table ends where other data the code uses begins.
  const designated = new Set<bigint>();
  for (const ins of insns) {
    const m = ins.memory;
    if (m?.ripRelative && m.target !== undefined) designated.add(m.target);
    else if (m && m.base === undefined && m.displacement !== 0n) designated.add(BigInt.asUintN(64, m.displacement));
    for (const v of ins.immediates ?? []) designated.add(BigInt.asUintN(64, v));
  }
  /**
   * Reads a table at `addr`: int32 entries relative to the table (PIC) or absolute 64-bit entries,
   * each an instruction start of this function (or of its `.cold` part). Stops at `bound`, at the
   * first entry that is not one, at other data the function designates and at a data symbol.
   */
  const readTable = (addr: bigint, entrySize: 4 | 8, bound: number | undefined): JumpTable | undefined => {
    if (tableAt.has(addr)) return undefined;
    const table: JumpTable = { addr, entrySize, targets: [] };
    const max = bound ?? 4096;
    for (let e = 0; e < max; e++) {
      const at = addr + BigInt(e * entrySize);
      if (e > 0 && (tableAt.has(at) || designated.has(at) || img.objectAt(at) !== undefined)) break;
      const raw = img.readSome(at, entrySize);
      if (raw.length < entrySize) break;
      const v = readInt(raw, 0, entrySize);
      const target = entrySize === 4 ? addr + v : BigInt.asUintN(64, v);
      if (!sameGroup(target)) break;
      table.targets.push(target);
    }
    return table.targets.length > 0 ? table : undefined;
  };
  const addTable = (t: JumpTable | undefined): void => {
    if (!t || tableAt.has(t.addr)) return;
    tableAt.set(t.addr, out.tables.length);
    out.tables.push(t);
  };
  // (1) Dispatch code: `jmp [T + idx*8]` (non-PIC), and `movsxd r, [B + idx*4]` (PIC) where B was
  // last set, anywhere before in the function (gcc hoists it out of loops), by `lea B, [rip+T]`.
  for (let k = 0; k < insns.length; k++) {
    const ins = insns[k]!;
    const m = ins.memory;
    if (!m || m.ripRelative || m.index === undefined || m.segment !== undefined) continue;
    if (m.base === undefined && m.scale === 8 && (ins.mnemonic === 'jmp' || ins.mnemonic === 'mov')) {
      const t = BigInt.asUintN(64, m.displacement);
      if (isReadOnlyData(img, t)) addTable(readTable(t, 8, switchBound(insns, k)));
      continue;
    }
    if (m.base === undefined || m.scale !== 4 || m.displacement !== 0n || (ins.mnemonic !== 'movsxd' && ins.mnemonic !== 'movsx')) continue;
    const base = m.base;
    for (let b = k - 1; b >= 0; b--) {
      const p = insns[b]!;
      if (p.dest !== base) continue;
      const pm = p.memory;
      if (p.mnemonic === 'lea' && pm?.ripRelative && pm.target !== undefined && isReadOnlyData(img, pm.target)) {
        addTable(readTable(pm.target, 4, switchBound(insns, k)));
      }
      break;
    }
  }
  // (2) By content: any read-only address loaded by a `lea` whose data is a run of offsets to
  // instruction starts of this function is a code-relative table, whatever dispatches through it
  // (the register may be spilled, copied or rebuilt); likewise absolute addresses in non-PIE code.
  for (const ins of insns) {
    const m = ins.memory;
    if (ins.mnemonic === 'lea' && m?.ripRelative && m.target !== undefined && (m.target & 3n) === 0n && isReadOnlyData(img, m.target)) {
      const t = readTable(m.target, 4, undefined);
      if (t && t.targets.length >= 2) addTable(t);
    }
    if (img.isFixedAddress) {
      const cands = [...(ins.immediates ?? []), ...(m && !m.ripRelative && m.displacement > 0n ? [m.displacement] : [])];
      for (const c of cands) {
        const v = BigInt.asUintN(64, c);
        if ((v & 7n) !== 0n || !isReadOnlyData(img, v)) continue;
        const t = readTable(v, 8, undefined);
        if (t && t.targets.length >= 2) addTable(t);
      }
    }
  }

  for (const ins of insns) {
    if (ins.invalid) {
      out.invalidAt ??= ins.address;
      continue;
    }
    const f = ins.fields;
    const handled = new Set<number>();
    if (ins.branchTarget !== undefined && f.branch) {
      const t = ins.branchTarget;
      if (inside(t)) {
        if (!starts.has(t)) out.midInstructionJump ??= { from: ins.address, to: t };
      } else {
        // rel8 exits (short tail calls to a neighbour) get a branch island in the patch: see emit.ts.
        addRef(ins, f.branch, 'pc', t);
      }
      handled.add(f.branch.offset);
    }
    const m = ins.memory;
    if (m?.ripRelative && m.target !== undefined && f.displacement) {
      const t = m.target;
      if (!inside(t)) addRef(ins, f.displacement, 'pc', t, tableAt.get(t));
      handled.add(f.displacement.offset);
    }
    // Absolute addresses: exact with --emit-relocs, by value in non-PIE code otherwise.
    for (const field of [f.displacement, f.immediate, f.immediate2]) {
      if (!field || handled.has(field.offset)) continue;
      const at = ins.address + BigInt(field.offset);
      const r = img.codeRelocations.get(at);
      if (r) {
        const kind: FieldKind | undefined =
          r.type === R_X86_64_64 ? 'abs64' : r.type === R_X86_64_32 ? 'abs32' : r.type === R_X86_64_32S ? 'abs32s' : undefined;
        if (kind === undefined) continue; // TLS offsets and the like: constants while the layout is unchanged
        const s = r.symbol;
        const base = s ? (s.type === STT_SECTION ? (img.elf.sections[s.shndx]?.addr ?? 0n) : s.value) : 0n;
        const t = BigInt.asUintN(64, base + r.addend);
        addRef(ins, field, kind, t, tableAt.get(t));
        continue;
      }
      if (!img.isFixedAddress || img.hasEmitRelocs || m?.segment !== undefined) continue;
      const v = readInt(bytes, Number(ins.address - fn.vaddr) + field.offset, field.size);
      const t = BigInt.asUintN(64, v);
      if (field.size === 4 && v >= I32_MIN && img.isImageAddress(t)) addRef(ins, field, 'abs32s', t, tableAt.get(t));
      else if (field.size === 8 && img.isImageAddress(t)) addRef(ins, field, 'abs64', t, tableAt.get(t));
    }
  }
  return out;
}
