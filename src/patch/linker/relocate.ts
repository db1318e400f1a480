/**
 * Relocation of a patch's code and data for their final run-time addresses in the target.
 * Pure: symbol look-ups go through a resolver the caller supplies, so this runs (and is tested)
 * without a process. Every field is range-checked; an overflow is a typed refusal, never a silent
 * truncation.
 */
import { RefusedError } from '../../errors.js';
import type { PatchPlan, Relocation, RelocationTarget, RelocationType } from '../plan.js';
import type { PatchLayout } from './layout.js';

/** Resolves a `symbol` relocation target to a run-time address; returns undefined when not found. */
export type SymbolLookup = (target: Extract<RelocationTarget, { kind: 'symbol' }>) => bigint | undefined;

/** What the linker needs to know about the target. */
export interface LinkEnvironment {
  /** Load bias of the target module (run-time address = link-time vaddr + loadBias). */
  loadBias: bigint;
  /** Resolves symbols; see src/patch/linker/resolve.ts for the ELF-backed implementation. */
  lookupSymbol: SymbolLookup;
}

/** One relocation as resolved: enough for a verifier to re-link the signed code and compare. */
export interface ResolvedRelocation {
  part: 'function' | 'data';
  /** Index into plan.functions or plan.data. */
  index: number;
  offset: number;
  type: RelocationType;
  /** S: the run-time address the relocation pointed to. */
  symbolAddress: bigint;
  addend: bigint;
}

/** The linked patch: bytes ready to be written at `codeBase` / `dataBase` / `varsBase`. */
export interface LinkedPatch {
  codeBase: bigint;
  dataBase: bigint;
  varsBase: bigint;
  /** The whole code region (functions at their layout offsets, gaps filled with int3). */
  code: Uint8Array;
  /** The whole data region (gaps zero). */
  data: Uint8Array;
  /** The initial contents of the variables region (gaps zero). */
  vars: Uint8Array;
  /** Run-time address of the new code of plan.functions[i]. */
  functionAddresses: bigint[];
  /** Run-time address of plan.data[i]. */
  dataAddresses: bigint[];
  resolved: ResolvedRelocation[];
}

const INT3 = 0xcc;
const U32_MAX = 0xffff_ffffn;
const I32_MIN = -(1n << 31n);
const I32_MAX = (1n << 31n) - 1n;
const U64_MASK = (1n << 64n) - 1n;

function hexAddr(v: bigint): string {
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

function describeTarget(t: RelocationTarget): string {
  switch (t.kind) {
    case 'module':
      return `module vaddr ${hexAddr(t.vaddr)}`;
    case 'symbol':
      return `symbol ${t.name}${t.version ? `@${t.version}` : ''}${t.file ? ` (file ${t.file})` : ''}`;
    case 'local':
      return `${t.part} #${t.index}+${t.offset} of this patch`;
  }
}

/** Size in bytes of the field a relocation type writes. */
export function relocationWidth(type: RelocationType): number {
  return type === 'abs64' ? 8 : 4;
}

/**
 * Computes S for a relocation target, given where every part of this patch lives.
 * Throws RefusedError(LINK_SYMBOL_NOT_FOUND / LINK_BAD_LOCAL) when it cannot be resolved.
 */
export function resolveTarget(
  target: RelocationTarget,
  env: LinkEnvironment,
  functionAddresses: bigint[],
  dataAddresses: bigint[],
  plan: PatchPlan,
  where: string,
): bigint {
  switch (target.kind) {
    case 'module':
      return target.vaddr + env.loadBias;
    case 'symbol': {
      const s = env.lookupSymbol(target);
      if (s === undefined) {
        throw new RefusedError(
          'LINK_SYMBOL_NOT_FOUND',
          `${where} refers to ${describeTarget(target)}, which is defined neither in the target module nor in the .dynsym of any loaded module: the package does not fit this process`,
        );
      }
      return s;
    }
    case 'local': {
      const addrs = target.part === 'function' ? functionAddresses : dataAddresses;
      const sizes = target.part === 'function' ? plan.functions.map((f) => f.code.length) : plan.data.map((d) => d.bytes.length);
      const base = addrs[target.index];
      const size = sizes[target.index];
      if (base === undefined || size === undefined || !Number.isInteger(target.offset) || target.offset < 0 || target.offset > size) {
        throw new RefusedError('LINK_BAD_LOCAL', `${where} refers to ${describeTarget(target)}, which does not exist: rebuild the package`);
      }
      return base + BigInt(target.offset);
    }
  }
}

/**
 * Writes one relocated field into `bytes` (the region holding it) at `fieldOffset`.
 * `place` is P, the run-time address of the field. Throws RefusedError(LINK_RELOCATION_OVERFLOW).
 */
export function applyRelocationField(
  bytes: Uint8Array,
  fieldOffset: number,
  type: RelocationType,
  symbolAddress: bigint,
  addend: bigint,
  place: bigint,
  where: string,
): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const overflow = (value: bigint, range: string): RefusedError =>
    new RefusedError(
      'LINK_RELOCATION_OVERFLOW',
      `${where}: ${type} value ${hexAddr(value)} does not fit ${range} (S=${hexAddr(symbolAddress)}, A=${addend}, P=${hexAddr(place)}); ` +
        'the new code could not be placed close enough to what it refers to',
    );
  switch (type) {
    case 'pc32': {
      const v = symbolAddress + addend - place;
      if (v < I32_MIN || v > I32_MAX) throw overflow(v, 'a signed 32-bit displacement');
      view.setInt32(fieldOffset, Number(v), true);
      return;
    }
    case 'abs64': {
      view.setBigUint64(fieldOffset, (symbolAddress + addend) & U64_MASK, true);
      return;
    }
    case 'abs32': {
      const v = symbolAddress + addend;
      if (v < 0n || v > U32_MAX) throw overflow(v, 'an unsigned 32-bit field');
      view.setUint32(fieldOffset, Number(v), true);
      return;
    }
    case 'abs32s': {
      const v = symbolAddress + addend;
      if (v < I32_MIN || v > I32_MAX) throw overflow(v, 'a sign-extended 32-bit field');
      view.setInt32(fieldOffset, Number(v), true);
      return;
    }
  }
}

function checkRelocationBounds(r: Relocation, partSize: number, where: string): void {
  const width = relocationWidth(r.type);
  if (!Number.isInteger(r.offset) || r.offset < 0 || r.offset + width > partSize) {
    throw new RefusedError(
      'LINK_BAD_RELOCATION',
      `${where}: relocation at offset ${r.offset} (${r.type}) lies outside its ${partSize}-byte part: rebuild the package`,
    );
  }
}

/**
 * Links `plan` for a code region at `codeBase`, a data region at `dataBase` and a variables region
 * at `varsBase` (all already aligned as `layout` asks). Overlapping relocation fields are refused.
 */
export function linkPatch(plan: PatchPlan, layout: PatchLayout, codeBase: bigint, dataBase: bigint, env: LinkEnvironment, varsBase = 0n): LinkedPatch {
  if (
    codeBase % BigInt(layout.codeAlign) !== 0n ||
    (layout.dataSize > 0 && dataBase % BigInt(layout.dataAlign) !== 0n) ||
    (layout.varsSize > 0 && varsBase % BigInt(layout.varsAlign) !== 0n)
  ) {
    throw new RefusedError('LINK_BAD_BASE', `arena base 0x${codeBase.toString(16)} / 0x${dataBase.toString(16)} / 0x${varsBase.toString(16)} is not aligned as the patch needs`);
  }
  const code = new Uint8Array(layout.codeSize).fill(INT3);
  const data = new Uint8Array(layout.dataSize);
  const vars = new Uint8Array(layout.varsSize);
  const functionAddresses = layout.functionOffsets.map((o) => codeBase + BigInt(o));
  const dataAddresses = layout.dataOffsets.map((o, i) => (plan.data[i]!.writable === true ? varsBase : dataBase) + BigInt(o));
  const resolved: ResolvedRelocation[] = [];

  const parts: Array<{ part: 'function' | 'data'; index: number; bytes: Uint8Array; relocations: Relocation[]; region: Uint8Array; regionOffset: number; base: bigint; name: string }> = [];
  plan.functions.forEach((fn, i) =>
    parts.push({ part: 'function', index: i, bytes: fn.code, relocations: fn.relocations, region: code, regionOffset: layout.functionOffsets[i]!, base: codeBase, name: `new code of ${fn.name}` }),
  );
  plan.data.forEach((d, i) => {
    const writable = d.writable === true;
    parts.push({ part: 'data', index: i, bytes: d.bytes, relocations: d.relocations, region: writable ? vars : data, regionOffset: layout.dataOffsets[i]!, base: writable ? varsBase : dataBase, name: `${writable ? 'variable' : 'data'} ${d.name}` });
  });

  for (const p of parts) {
    p.region.set(p.bytes, p.regionOffset);
    const covered: Array<[number, number]> = [];
    for (const r of p.relocations) {
      const where = `${p.name}+0x${r.offset.toString(16)}`;
      checkRelocationBounds(r, p.bytes.length, where);
      const end = r.offset + relocationWidth(r.type);
      if (covered.some(([s, e]) => r.offset < e && s < end)) {
        throw new RefusedError('LINK_BAD_RELOCATION', `${where}: relocations overlap: rebuild the package`);
      }
      covered.push([r.offset, end]);
      const s = resolveTarget(r.target, env, functionAddresses, dataAddresses, plan, where);
      const fieldOffset = p.regionOffset + r.offset;
      applyRelocationField(p.region, fieldOffset, r.type, s, r.addend, p.base + BigInt(fieldOffset), where);
      resolved.push({ part: p.part, index: p.index, offset: r.offset, type: r.type, symbolAddress: s, addend: r.addend });
    }
  }
  return { codeBase, dataBase, varsBase, code, data, vars, functionAddresses, dataAddresses, resolved };
}
