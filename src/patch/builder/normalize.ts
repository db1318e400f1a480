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
export function normalizeFunction(img: BuildImage, fn: FunctionInfo, allBases?: ReadonlySet<bigint>): NormalFunction {
  const bytes = img.functionBytes(fn);
  const masked = bytes.slice();
  const insns = decodeFunction(bytes, fn.vaddr, { text: false });
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
  for (let k = 0; k < insns.length; k++) {
    const ins = insns[k]!;
    if (ins.flow !== 'indirect-branch' || ins.mnemonic !== 'jmp') continue;
    let table: JumpTable | undefined;
    let bound = switchBound(insns, k);
    const m = ins.memory;
    if (m && !m.ripRelative && m.base === undefined && m.index !== undefined && m.scale === 8 && m.segment === undefined) {
      // Non-PIC: jmp [T + idx*8], absolute entries.
      const t = BigInt.asUintN(64, m.displacement);
      if (isReadOnlyData(img, t)) table = { addr: t, entrySize: 8, targets: [] };
    } else if (!m) {
      // PIC: lea base, [rip+T] ... movsxd idx, [base+idx*4] ... add idx, base ... jmp idx
      for (let b = k - 1; b >= 0 && b >= k - 14; b--) {
        const p = insns[b]!;
        if (p.flow !== 'next') break;
        const pm = p.memory;
        if (p.mnemonic === 'lea' && pm?.ripRelative && pm.target !== undefined && isReadOnlyData(img, pm.target)) {
          table = { addr: pm.target, entrySize: 4, targets: [] };
          break;
        }
        if (p.mnemonic === 'mov' && pm && !pm.ripRelative && pm.base === undefined && pm.index !== undefined && pm.scale === 8) {
          const t = BigInt.asUintN(64, pm.displacement);
          if (isReadOnlyData(img, t)) {
            table = { addr: t, entrySize: 8, targets: [] };
            break;
          }
        }
      }
    }
    if (!table) continue; // a tail call through a pointer; code addresses in data are checked elsewhere
    if (tableAt.has(table.addr)) continue;
    bound ??= 4096;
    for (let e = 0; e < bound; e++) {
      const at = table.addr + BigInt(e * table.entrySize);
      if (e > 0 && (tableAt.has(at) || img.objectAt(at) !== undefined)) break;
      const raw = img.readSome(at, table.entrySize);
      if (raw.length < table.entrySize) break;
      const v = readInt(raw, 0, table.entrySize);
      const target = table.entrySize === 4 ? table.addr + v : BigInt.asUintN(64, v);
      if (!sameGroup(target)) break;
      table.targets.push(target);
    }
    if (table.targets.length === 0) continue;
    tableAt.set(table.addr, out.tables.length);
    out.tables.push(table);
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
