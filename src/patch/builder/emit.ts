/**
 * Emission of the plan: the new code of each changed function with its relocations, the data it
 * carries (new constants, and the variables the fix adds), and the entry plan of the old function.
 *
 * Binding (documented choice): every reference to something the running build already has binds to
 * it by the OLD build's link-time vaddr (`kind: 'module'`): unchanged functions, global data, PLT
 * stubs (so IFUNC-resolved libc functions go through the running process's own PLT and GOT), GOT
 * slots (so TLS initial-exec / general-dynamic slots the dynamic linker filled are reused). A vaddr
 * of the build identified by build-id is exact, needs no symbol table at apply time and cannot be
 * confused by interposition or same-named statics. `kind: 'symbol'` is used only for an imported
 * symbol the running build reaches through no slot of its own (a GOT slot is then carried as data).
 * References between parts of the patch are `kind: 'local'`.
 */
import { R_X86_64_32, R_X86_64_32S, R_X86_64_PC32, R_X86_64_PLT32, STT_SECTION } from '../../elf/index.js';
import { classifyEntry } from '../../x86/index.js';
import type { EntryPlan, PatchData, PatchFunction, Relocation, RelocationTarget, RelocationType } from '../plan.js';
import { BuildImage, displayKey, targetString, type FunctionInfo, type ObjectInfo, type RefTarget } from './image.js';
import type { CodeRef, JumpTable, NormalFunction } from './normalize.js';
import { RefusalCode, type Refusal } from './refusal.js';

/** A piece of new code placed in the patch. */
export interface PlacedUnit {
  nf: NormalFunction;
  /** Index of the PatchFunction whose code holds it. */
  host: number;
  /** Offset of the unit inside the host's code. */
  offset: number;
  /** Branch islands (jmp rel32) for short branches leaving the unit: ref index → island offset in the host. */
  islands: Map<number, number>;
}

/** What the emitter produced, for reports. */
export interface EmitResult {
  functions: PatchFunction[];
  data: PatchData[];
  /** Units placed inside a host's code that are not entered through an old entry (cold parts, new helpers). */
  appended: { host: number; key: string; size: number; offset: number }[];
  /** Entry forms found (x86 EntryForm), per function. */
  entryForms: string[];
  refusals: Refusal[];
}

const CODE_ALIGN = 16;
const RELOCATION_BYTES: Record<RelocationType, number> = { pc32: 4, abs32: 4, abs32s: 4, abs64: 8 };
const INT3 = 0xcc;

function alignOf(addr: bigint, cap: number): number {
  let a = 1;
  while (a < cap && (addr & BigInt(a * 2 - 1)) === 0n) a *= 2;
  return a;
}

/** Builds the patch functions and data for the `entries` (old functions to redirect, in order). */
export class Emitter {
  readonly refusals: Refusal[] = [];
  readonly functions: PatchFunction[] = [];
  readonly data: PatchData[] = [];
  readonly appended: EmitResult['appended'] = [];
  readonly entryForms: string[] = [];
  readonly #placed = new Map<string, PlacedUnit>();
  readonly #dataByAddr = new Map<string, number>();
  readonly #code: Uint8Array[] = [];
  readonly #relocs: Relocation[][] = [];
  readonly #queue: PlacedUnit[] = [];
  /** Offset of the instruction whose reference is being bound (for messages). */
  #refInsn: number | undefined;

  constructor(
    readonly old: BuildImage,
    readonly neu: BuildImage,
    /** Normalised new functions by key (every function of the new build that may be placed). */
    readonly normalizeNew: (f: FunctionInfo) => NormalFunction,
    /** Keys of new functions whose new code must replace the old (changed or in a changed group). */
    readonly changed: ReadonlySet<string>,
    /** Branch targets in the old build, for the entry check. */
    readonly oldBranchTargets: ReadonlySet<bigint>,
  ) {}

  #refuse(code: Refusal['code'], symbol: string, message: string): void {
    if (this.refusals.some((r) => r.code === code && r.symbol === symbol && r.message === message)) return;
    this.refusals.push({ code, symbol, message });
  }

  /** Adds a redirected function (an old function and its new code). Returns its index. */
  addEntry(oldFn: FunctionInfo, nf: NormalFunction): number {
    const index = this.functions.length;
    const entry = this.#entryPlan(oldFn);
    const oldBytes = this.old.functionBytes(oldFn);
    const pf: PatchFunction = {
      name: oldFn.name,
      vaddr: oldFn.vaddr,
      size: oldFn.size,
      oldHash: BuildImage.sha256(oldBytes),
      entry: entry ?? { kind: 'plain', siteVaddr: oldFn.vaddr, switchVaddr: oldFn.vaddr, expected: oldBytes.slice(0, 5) },
      code: new Uint8Array(0),
      align: CODE_ALIGN,
      relocations: [],
    };
    if (oldFn.file !== undefined) pf.file = oldFn.file;
    this.functions.push(pf);
    this.#code.push(nf.bytes.slice());
    this.#relocs.push([]);
    const unit: PlacedUnit = { nf, host: index, offset: 0, islands: new Map() };
    this.#placeIslands(unit);
    this.#placed.set(nf.fn.key, unit);
    this.#queue.push(unit);
    return index;
  }

  #entryPlan(f: FunctionInfo): EntryPlan | undefined {
    const code = this.old.functionBytes(f);
    const secStart = f.section.addr;
    const beforeLen = Number(f.vaddr - secStart < 16n ? f.vaddr - secStart : 16n);
    const before = beforeLen > 0 ? this.old.elf.readVaddr(f.vaddr - BigInt(beforeLen), beforeLen) : new Uint8Array(0);
    const prev = f.index > 0 ? this.old.functions[f.index - 1] : undefined;
    const external = new Set<bigint>();
    for (let a = f.vaddr + 1n; a < f.vaddr + 16n && a < f.end; a++) if (this.oldBranchTargets.has(a)) external.add(a);
    const input: Parameters<typeof classifyEntry>[0] = { address: f.vaddr, code, before, externalBranchTargets: external };
    if (prev && prev.section === f.section && prev.end <= f.vaddr) input.paddingFloor = prev.end;
    const c = classifyEntry(input);
    this.entryForms.push(c.form);
    const name = displayKey(f.key);
    if ((c.kind === 'padded' || c.kind === 'plain') && c.siteAddress !== undefined && c.switchAddress !== undefined && c.expected) {
      if (c.branchesIntoSite.length > 0) {
        this.#refuse(
          RefusalCode.ENTRY_BRANCH_TARGET,
          name,
          `${name}: a branch at 0x${c.branchesIntoSite[0]!.toString(16)} lands inside the entry bytes the jump would overwrite; build with -fpatchable-function-entry=7,5 so the entry has room for the switch`,
        );
        return undefined;
      }
      return { kind: c.kind, siteVaddr: c.siteAddress, switchVaddr: c.switchAddress, expected: c.expected.slice() };
    }
    if (c.kind === 'undecodable') {
      this.#refuse(RefusalCode.UNDECODABLE, name, `${name}: the entry of the running function cannot be decoded (${c.reason ?? 'invalid instruction'})`);
    } else {
      this.#refuse(
        RefusalCode.TOO_SMALL,
        name,
        `${name} is too small to redirect: ${c.reason ?? 'no room for a 5-byte jump and no padding'}; build with -fpatchable-function-entry=7,5 (5 bytes of padding and a 2-byte switch before every function)`,
      );
    }
    return undefined;
  }

  /** Places a function (cold part, new helper) inside `host`'s code. */
  #append(host: number, f: FunctionInfo): PlacedUnit {
    const nf = this.normalizeNew(f);
    const code = this.#code[host]!;
    const offset = Math.ceil(code.length / CODE_ALIGN) * CODE_ALIGN;
    const grown = new Uint8Array(offset + nf.bytes.length).fill(INT3);
    grown.set(code, 0);
    grown.set(nf.bytes, offset);
    this.#code[host] = grown;
    const unit: PlacedUnit = { nf, host, offset, islands: new Map() };
    this.#placeIslands(unit);
    this.#placed.set(f.key, unit);
    this.#queue.push(unit);
    this.appended.push({ host, key: f.key, size: nf.bytes.length, offset });
    return unit;
  }

  /**
   * A short branch (jmp/jcc rel8) that leaves the function cannot reach anything from the arena: it
   * is pointed at an island right after the unit's code, a `jmp rel32` to the real target. Refused
   * when the island is beyond the rel8 range.
   */
  #placeIslands(u: PlacedUnit): void {
    const rel8 = u.nf.refs.map((r, i) => ({ r, i })).filter(({ r }) => r.kind === 'pc' && r.size === 1);
    if (rel8.length === 0) return;
    let code = this.#code[u.host]!;
    const name = displayKey(u.nf.fn.key);
    for (const { r, i } of rel8) {
      const island = code.length;
      const disp = island - (u.offset + r.insnEnd);
      if (disp > 127) {
        this.#refuse(
          RefusalCode.REL8_EXIT,
          name,
          `${name}: the short branch at +0x${r.insnOff.toString(16)} leaves the function (to ${targetString(r.target)}) and no branch island is within its 127-byte reach; build with -ffunction-sections so that calls and jumps between functions use 32-bit displacements`,
        );
        continue;
      }
      const grown = new Uint8Array(island + 5);
      grown.set(code, 0);
      grown[island] = 0xe9; // jmp rel32, relocated in #relocateUnit
      grown[u.offset + r.off] = disp;
      code = grown;
      u.islands.set(i, island);
    }
    this.#code[u.host] = code;
  }

  /** Resolves every placed unit's references; call once after all entries are added. */
  finish(): EmitResult {
    while (this.#queue.length > 0) this.#relocateUnit(this.#queue.shift()!);
    this.functions.forEach((f, i) => {
      f.code = this.#code[i]!;
      f.relocations = this.#relocs[i]!;
    });
    return { functions: this.functions, data: this.data, appended: this.appended, entryForms: this.entryForms, refusals: this.refusals };
  }

  #checkUnit(u: PlacedUnit): boolean {
    const nf = u.nf;
    const name = displayKey(nf.fn.key);
    let ok = true;
    if (nf.invalidAt !== undefined) {
      this.#refuse(
        RefusalCode.UNDECODABLE,
        name,
        `${name}: the bytes at 0x${nf.invalidAt.toString(16)} (new build) do not decode as x86-64 instructions (data or hand-written bytes in code); the builder cannot relocate this function with confidence: move the data out of the function or patch it by a restart`,
      );
      ok = false;
    }
    if (nf.midInstructionJump) {
      this.#refuse(
        RefusalCode.MID_INSTRUCTION_JUMP,
        name,
        `${name}: the branch at 0x${nf.midInstructionJump.from.toString(16)} jumps into the middle of an instruction (0x${nf.midInstructionJump.to.toString(16)}, new build); such code cannot be decoded with confidence`,
      );
      ok = false;
    }
    return ok;
  }

  #relocateUnit(u: PlacedUnit): void {
    if (!this.#checkUnit(u)) return;
    const relocs = this.#relocs[u.host]!;
    u.nf.refs.forEach((ref, refIndex) => {
      if (ref.kind === 'pc' && ref.size === 1) {
        const island = u.islands.get(refIndex);
        if (island === undefined) return; // refused in #placeIslands
        const bound = this.#bind(ref.target, ref.addr, u);
        if (bound) relocs.push({ offset: island + 1, type: 'pc32', target: bound, addend: -4n });
        return;
      }
      const fieldOffset = u.offset + ref.off;
      const type: RelocationType = ref.kind === 'pc' ? 'pc32' : ref.kind;
      if (ref.size !== (type === 'abs64' ? 8 : 4)) {
        this.#refuse(RefusalCode.UNRESOLVED_REFERENCE, displayKey(u.nf.fn.key), `${displayKey(u.nf.fn.key)}: a ${ref.size}-byte address field at +0x${ref.off.toString(16)} cannot be relocated`);
        return;
      }
      const pcAddend = ref.kind === 'pc' ? -BigInt(ref.insnEnd - ref.off) : 0n;
      if (ref.table !== undefined) {
        const idx = this.#carryTable(u, u.nf.tables[ref.table]!);
        if (idx === undefined) return;
        relocs.push({ offset: fieldOffset, type, target: { kind: 'local', part: 'data', index: idx, offset: 0 }, addend: pcAddend });
        return;
      }
      this.#refInsn = ref.insnOff;
      const bound = this.#bind(ref.target, ref.addr, u);
      this.#refInsn = undefined;
      if (!bound) return;
      relocs.push({ offset: fieldOffset, type, target: bound, addend: pcAddend });
    });
  }

  #unresolved(u: PlacedUnit | undefined, what: string, why: string): undefined {
    const name = u ? displayKey(u.nf.fn.key) : 'data';
    this.#refuse(RefusalCode.UNRESOLVED_REFERENCE, name, `${name}: cannot bind the reference to ${what}: ${why}`);
    return undefined;
  }

  /** Binds a reference of new code/data to the running build or to the patch. */
  #bind(t: RefTarget, addr: bigint, u: PlacedUnit | undefined): RelocationTarget | undefined {
    switch (t.t) {
      case 'func': {
        const placed = this.#placed.get(t.key);
        if (placed) return { kind: 'local', part: 'function', index: placed.host, offset: placed.offset + t.off };
        const nf = this.neu.functionsByKey.get(t.key);
        const of = this.old.functionsByKey.get(t.key);
        if (of && !this.changed.has(t.key)) return { kind: 'module', vaddr: of.vaddr + BigInt(t.off) };
        if (!nf) return this.#unresolved(u, displayKey(t.key), 'not a function of the new build');
        if (!u) {
          // Data pointing at new code: place it in the first function's code.
          if (this.functions.length === 0) return this.#unresolved(u, displayKey(t.key), 'no host function');
          const p = this.#append(0, nf);
          return { kind: 'local', part: 'function', index: p.host, offset: p.offset + t.off };
        }
        const p = this.#append(u.host, nf);
        return { kind: 'local', part: 'function', index: p.host, offset: p.offset + t.off };
      }
      case 'obj': {
        const oo = this.old.objectsByKey.get(t.key);
        const no = this.neu.objectsByKey.get(t.key);
        const ro = no && (no.kind === 'readonly' || no.kind === 'relro');
        if (oo && no && (!ro || (oo.size === no.size && this.old.objectSignature(oo) === this.neu.objectSignature(no)))) {
          return { kind: 'module', vaddr: oo.vaddr + BigInt(t.off) };
        }
        if (no && ro) {
          const idx = this.#carryObject(no);
          return idx === undefined ? undefined : { kind: 'local', part: 'data', index: idx, offset: t.off };
        }
        if (oo) return { kind: 'module', vaddr: oo.vaddr + BigInt(t.off) };
        if (no?.kind === 'writable') {
          const idx = this.#carryObject(no);
          return idx === undefined ? undefined : { kind: 'local', part: 'data', index: idx, offset: t.off };
        }
        return this.#unresolved(u, displayKey(t.key), 'the running build has no such data object');
      }
      case 'plt': {
        const stub = this.old.pltByKey.get(t.key);
        if (stub !== undefined) return { kind: 'module', vaddr: stub + BigInt(t.off) };
        const sym = /^sym:([^@+]+)(?:@([^+]+))?$/.exec(t.key);
        if (sym) {
          const r: RelocationTarget = { kind: 'symbol', name: sym[1]! };
          if (sym[2]) r.version = sym[2];
          return r;
        }
        return this.#unresolved(u, `PLT stub ${t.key}`, 'the running build has no PLT stub for it');
      }
      case 'got': {
        const slot = this.old.gotByKey.get(t.key);
        if (slot !== undefined) return { kind: 'module', vaddr: slot + BigInt(t.off) };
        return this.#carryGotSlot(t.key, addr - BigInt(t.off), t.off, u);
      }
      case 'anon': {
        const idx = this.#carryAnon(addr, u);
        return idx === undefined ? undefined : { kind: 'local', part: 'data', index: idx, offset: 0 };
      }
      case 'near': {
        const v = this.#resolveNear(t.key, t.off);
        if (v !== undefined) return { kind: 'module', vaddr: v };
        return this.#unresolved(u, targetString(t), 'the running build has no such symbol or section');
      }
      case 'abs':
        return this.#unresolved(u, `0x${t.value.toString(16)}`, 'the address lies outside every section of the new build');
    }
  }

  #resolveNear(key: string, off: bigint): bigint | undefined {
    if (key.startsWith('section:')) {
      const s = this.old.elf.findSection(key.slice('section:'.length));
      return s ? s.addr + off : undefined;
    }
    const m = /^(?:G:(.*)|L:([^:]*):(.*))$/.exec(key);
    if (!m) return undefined;
    const s = m[1] !== undefined ? this.old.elf.findSymbol(m[1], { table: 'symtab' }) : this.old.elf.findSymbol(m[3]!, { table: 'symtab', file: m[2]! });
    return s ? s.value + off : undefined;
  }

  /** Every unit of new code placed so far (all of them after `finish`), for unwind.ts. */
  placedUnits(): IterableIterator<PlacedUnit> {
    return this.#placed.values();
  }

  /** Binds an address of the new build that carried data points at (refused, undefined, when it cannot be bound). */
  bindDataPointer(addr: bigint): RelocationTarget | undefined {
    return this.#bind(this.neu.symbolize(addr), addr, undefined);
  }

  /** Adds a data item under a de-duplication `key` (or returns the one already added). */
  addData(key: string, d: PatchData): number {
    return this.#dataByAddr.get(key) ?? this.#addData(key, d);
  }

  #addData(key: string, d: PatchData): number {
    const idx = this.data.length;
    this.data.push(d);
    this.#dataByAddr.set(key, idx);
    return idx;
  }

  /**
   * Relocations for the address fields of new-build data in [addr, addr+len): pointers the dynamic
   * linker fills (RELATIVE, GLOB_DAT...), static relocations kept by --emit-relocs (64-bit, 32-bit and
   * PC-relative fields, e.g. jump-table entries), and in non-PIE builds without relocations 8-byte
   * words holding an address of the image. Each field is bound like a reference from code.
   */
  #dataRelocations(addr: bigint, len: number, u?: PlacedUnit): Relocation[] {
    const out: Relocation[] = [];
    for (let off = 0; off < len; off++) {
      const at = addr + BigInt(off);
      const r = this.neu.dataRelocations.get(at);
      let target: bigint | undefined;
      let key: string | undefined;
      let type: RelocationType = 'abs64';
      if (r) {
        if (r.type === R_X86_64_PC32 || r.type === R_X86_64_PLT32) type = 'pc32';
        else if (r.type === R_X86_64_32) type = 'abs32';
        else if (r.type === R_X86_64_32S) type = 'abs32s';
        const width = type === 'abs64' ? 8 : 4;
        if (off + width > len) continue;
        if (type === 'abs64') {
          const p = this.neu.dataPointer(r);
          target = p.addr;
          key = p.key;
        } else {
          // Static relocation: S + A is the address designated (for pc32 the field holds S + A - P).
          const sym = r.symbol;
          const base = sym ? (sym.type === STT_SECTION ? (this.neu.elf.sections[sym.shndx]?.addr ?? 0n) : sym.value) : 0n;
          target = BigInt.asUintN(64, base + r.addend);
        }
      } else if (this.neu.isFixedAddress && !this.neu.hasEmitRelocs && off % 8 === 0 && off + 8 <= len) {
        const b = this.neu.readSome(at, 8);
        const v = b.length === 8 ? new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true) : 0n;
        if (v !== 0n && this.neu.isImageAddress(v)) target = v;
      }
      if (target === undefined && key === undefined) continue;
      let bound: RelocationTarget | undefined;
      if (target !== undefined) bound = this.#bind(this.neu.symbolize(target), target, u);
      else if (key !== undefined) {
        const sym = /^sym:([^@+]+)(?:@([^+]+))?$/.exec(key);
        if (sym) {
          bound = { kind: 'symbol', name: sym[1]! };
          if (sym[2]) bound.version = sym[2];
        } else this.#unresolved(u, key, 'a relocated pointer in carried data');
      }
      if (bound) out.push({ offset: off, type, target: bound, addend: 0n });
      off += (type === 'abs64' ? 8 : 4) - 1;
    }
    return out;
  }

  /**
   * Without relocations, a carried constant whose int32 entries added to its own address land in
   * the referencing function is a relative jump table the dispatch analysis did not recognise:
   * carrying it verbatim would send the new code back into the old one.
   */
  #looksLikeRelativeTable(addr: bigint, bytes: Uint8Array, u: PlacedUnit | undefined): boolean {
    if (!u || bytes.length < 8) return false;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const fn = u.nf.fn;
    let hits = 0;
    for (let off = 0; off + 4 <= bytes.length && off < 64; off += 4) {
      const t = addr + BigInt(dv.getInt32(off, true));
      if (t > fn.vaddr && t < fn.end) hits++;
      else break;
    }
    return hits >= 2;
  }

  #carryObject(o: ObjectInfo): number | undefined {
    const key = `obj:${o.key}`;
    const have = this.#dataByAddr.get(key);
    if (have !== undefined) return have;
    const bytes = this.neu.elf.readVaddr(o.vaddr, o.size).slice();
    const d: PatchData = { name: displayKey(o.key), bytes, align: alignOf(o.vaddr, 64), relocations: [] };
    if (o.kind === 'writable') d.writable = true;
    const idx = this.#addData(key, d);
    const relocs = this.#dataRelocations(o.vaddr, o.size);
    for (const r of relocs) bytes.fill(0, r.offset, r.offset + RELOCATION_BYTES[r.type]);
    this.data[idx]!.relocations = relocs;
    return idx;
  }

  #carryAnon(addr: bigint, u: PlacedUnit | undefined): number | undefined {
    const key = `anon:${addr}`;
    const have = this.#dataByAddr.get(key);
    if (have !== undefined) return have;
    const str = this.neu.anonString(addr);
    const len = str ? str.length : Math.max(1, this.neu.anonExtent(addr));
    const bytes = this.neu.readSome(addr, len).slice();
    const sec = this.neu.sectionAt(addr);
    const name = `${sec?.name ?? 'data'}+0x${(addr - (sec?.addr ?? 0n)).toString(16)}${str ? ` "${Buffer.from(str.subarray(0, Math.min(24, str.length - 1))).toString('latin1').replace(/[^\x20-\x7e]/g, '.')}"` : ''}`;
    const idx = this.#addData(key, { name, bytes, align: str ? 1 : alignOf(addr, 32), relocations: [] });
    if (!str) {
      const relocs = this.#dataRelocations(addr, bytes.length, u);
      if (relocs.length === 0 && !this.neu.hasEmitRelocs && this.#looksLikeRelativeTable(addr, bytes, u)) {
        const name = displayKey(u!.nf.fn.key);
        this.#refuse(
          RefusalCode.UNBOUNDED_INDIRECT_JUMP,
          name,
          `${name}: ${this.#refInsn !== undefined ? `the instruction at +0x${this.#refInsn.toString(16)} loads ` : ''}the constant table at 0x${addr.toString(16)} (new build), whose words are offsets into the function, but it is not a jump table the builder can bound (no dispatch through it found, entries not all at instruction starts): carrying it would send the new code back into the old one. This is in the changed function itself: link with -Wl,--emit-relocs (its entries are then relocated exactly) or patch it by a restart`,
        );
      }
      for (const r of relocs) bytes.fill(0, r.offset, r.offset + RELOCATION_BYTES[r.type]);
      this.data[idx]!.relocations = relocs;
    }
    return idx;
  }

  #carryTable(u: PlacedUnit, t: JumpTable): number | undefined {
    const key = `table:${t.addr}`;
    const have = this.#dataByAddr.get(key);
    if (have !== undefined) return have;
    const fn = u.nf.fn;
    const bytes = new Uint8Array(t.targets.length * t.entrySize);
    const idx = this.#addData(key, { name: `jump table of ${displayKey(fn.key)}`, bytes, align: t.entrySize, relocations: [] });
    const relocs: Relocation[] = [];
    t.targets.forEach((target, i) => {
      let bound: RelocationTarget | undefined;
      if (target >= fn.vaddr && target < fn.end) bound = { kind: 'local', part: 'function', index: u.host, offset: u.offset + Number(target - fn.vaddr) };
      else bound = this.#bind(this.neu.symbolize(target), target, u);
      if (!bound) return;
      const off = i * t.entrySize;
      // PIC entries hold target - table: pc32 with P = table + off, so the addend adds off back.
      if (t.entrySize === 4) relocs.push({ offset: off, type: 'pc32', target: bound, addend: BigInt(off) });
      else relocs.push({ offset: off, type: 'abs64', target: bound, addend: 0n });
    });
    this.data[idx]!.relocations = relocs;
    return idx;
  }

  /** A GOT slot the running build does not have: carried as an 8-byte pointer. */
  #carryGotSlot(key: string, slotAddr: bigint, off: number, u: PlacedUnit | undefined): RelocationTarget | undefined {
    const dkey = `got:${key}`;
    let idx = this.#dataByAddr.get(dkey);
    if (idx === undefined) {
      let bound: RelocationTarget | undefined;
      const sym = /^sym:([^@+]+)(?:@([^+]+))?$/.exec(key);
      if (sym) {
        bound = { kind: 'symbol', name: sym[1]! };
        if (sym[2]) bound.version = sym[2];
      } else if (key.startsWith('addr:')) {
        const r = this.neu.dataRelocations.get(slotAddr);
        let target = r ? this.neu.dataPointer(r).addr : undefined;
        if (target === undefined && !r) {
          const b = this.neu.readSome(slotAddr, 8);
          if (b.length === 8) target = new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
        }
        if (target !== undefined) bound = this.#bind(this.neu.symbolize(target), target, u);
      } else {
        return this.#unresolved(u, `GOT slot ${key}`, 'the running build has no such slot (thread-local offsets and module ids can only be reused, not created)');
      }
      if (!bound) return this.#unresolved(u, `GOT slot ${key}`, 'its target is unknown');
      idx = this.#addData(dkey, { name: `GOT slot ${key}`, bytes: new Uint8Array(8), align: 8, relocations: [{ offset: 0, type: 'abs64', target: bound, addend: 0n }] });
    }
    return { kind: 'local', part: 'data', index: idx, offset: off };
  }
}

/** Refs from a function that enter another function somewhere other than its entry. */
export function midFunctionTargets(nf: NormalFunction): { key: string; off: number }[] {
  const out: { key: string; off: number }[] = [];
  const push = (t: RefTarget) => {
    if (t.t === 'func' && t.key !== nf.fn.key && t.off !== 0) out.push({ key: t.key, off: t.off });
  };
  for (const r of nf.refs) push(r.target);
  return out;
}

/** Re-export for the builder. */
export type { CodeRef };
