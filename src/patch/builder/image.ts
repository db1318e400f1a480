/**
 * One build (old or new) as the builder sees it: functions and data objects keyed so that the same
 * symbol has the same key in both builds, PLT stubs and GOT slots named after what they bind to, and
 * `symbolize(address)` that turns any address of the build into a build-independent reference.
 *
 * Keys: a global symbol is `G:name`; a local one is `L:file:name` (its STT_FILE), so `static`
 * functions with the same name in two files stay apart. A second local with the same key in the same
 * file (rare: gcc numbers its clones) gets `#2`, `#3`... in address order.
 */
import { createHash } from 'node:crypto';
import {
  parseElf,
  R_X86_64_64,
  R_X86_64_DTPMOD64,
  R_X86_64_DTPOFF64,
  R_X86_64_GLOB_DAT,
  R_X86_64_IRELATIVE,
  R_X86_64_JUMP_SLOT,
  R_X86_64_RELATIVE,
  R_X86_64_TPOFF64,
  ET_EXEC,
  PT_TLS,
  SHF_ALLOC,
  SHF_EXECINSTR,
  SHF_TLS,
  SHF_WRITE,
  SHN_ABS,
  SHN_COMMON,
  SHN_UNDEF,
  STB_LOCAL,
  STT_FUNC,
  STT_GNU_IFUNC,
  STT_OBJECT,
  STT_TLS,
  STT_COMMON,
  STT_SECTION,
  type ElfFile,
  type ElfRelocation,
  type ElfSection,
  type ElfSymbol,
} from '../../elf/index.js';
import { HotpatchError } from '../../errors.js';
import { decodeFunction } from '../../x86/index.js';

/** A function symbol of one build. */
export interface FunctionInfo {
  key: string;
  name: string;
  file?: string;
  vaddr: bigint;
  end: bigint;
  size: number;
  global: boolean;
  /** Other names at the same address (aliases). */
  aliases: string[];
  section: ElfSection;
  /** Index in the build's address-sorted function list. */
  index: number;
}

/** Where a data object lives, which decides what a change to it means. */
export type ObjectKind = 'writable' | 'readonly' | 'relro' | 'tls';

/** A data object symbol (STT_OBJECT / STT_TLS) of one build. */
export interface ObjectInfo {
  key: string;
  name: string;
  file?: string;
  /** vaddr; for TLS: the offset inside the TLS template (st_value). */
  vaddr: bigint;
  end: bigint;
  size: number;
  kind: ObjectKind;
  section: ElfSection;
  symbol: ElfSymbol;
}

/**
 * A build-independent description of what an address designates. `anon` (read-only data without
 * a symbol: string literals, constants) is compared by content, not by name.
 */
export type RefTarget =
  | { t: 'func'; key: string; off: number }
  | { t: 'obj'; key: string; off: number }
  | { t: 'plt'; key: string; off: number }
  | { t: 'got'; key: string; off: number }
  | { t: 'anon'; section: string; addr: bigint }
  | { t: 'near'; key: string; off: bigint }
  | { t: 'abs'; value: bigint };

/** A pointer-sized field in data that the dynamic linker or the static link filled in. */
export interface DataPointer {
  /** vaddr of the 8-byte field. */
  at: bigint;
  /** What it points to. */
  target: RefTarget;
  /** The address it points to in this build, when it is an address of this build. */
  addr?: bigint;
}

const PLT_SECTIONS = ['.plt', '.plt.sec', '.plt.got', '.iplt'];
const GOT_SECTIONS = ['.got', '.got.plt', '.igot', '.igot.plt'];

/** Human form of a key: `name` or `name (file.c)`. */
export function displayKey(key: string): string {
  if (key.startsWith('G:')) return key.slice(2);
  const m = /^L:([^:]*):(.*)$/.exec(key);
  if (!m) return key;
  return m[1] ? `${m[2]} (${m[1]})` : m[2]!;
}

/** Stable string of a reference target (anon: by address; callers compare anon by content). */
export function targetString(t: RefTarget): string {
  switch (t.t) {
    case 'func':
    case 'obj':
    case 'plt':
    case 'got':
      return `${t.t}:${t.key}+${t.off}`;
    case 'near':
      return `near:${t.key}+${t.off}`;
    case 'anon':
      return `anon:${t.section}@${t.addr.toString(16)}`;
    case 'abs':
      return `abs:${t.value.toString(16)}`;
  }
}

function lowerBound<T>(arr: readonly T[], value: bigint, get: (x: T) => bigint): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (get(arr[mid]!) <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/** Options for loading a build. */
export interface ImageOptions {
  /** Label for messages ("old", "new", a file name). */
  label: string;
  /**
   * A separate debug file or unstripped copy of the same build (same build-id): its .symtab names
   * the functions of a stripped file and its DWARF serves the struct checks.
   */
  debug?: { bytes: Uint8Array; name: string };
  /**
   * Called with the symbols (debug file adopted) before they are indexed: returns the compilation
   * units to key under another name (STT_FILE name → name in keys), see units.ts.
   */
  unitNames?: (symbols: readonly ElfSymbol[]) => ReadonlyMap<string, string>;
}

/** A parsed build with the indexes the builder needs. */
export class BuildImage {
  readonly elf: ElfFile;
  readonly label: string;
  readonly bytes: Uint8Array;
  /** Function symbols sorted by address (one per address; aliases folded in). */
  readonly functions: FunctionInfo[] = [];
  readonly functionsByKey = new Map<string, FunctionInfo>();
  /** Non-TLS data objects sorted by address. */
  readonly objects: ObjectInfo[] = [];
  readonly objectsByKey = new Map<string, ObjectInfo>();
  /** TLS objects (vaddr = offset in the TLS template). */
  readonly tlsObjects = new Map<string, ObjectInfo>();
  /** Allocated sections sorted by address. */
  readonly allocSections: ElfSection[];
  /** GOT slot vaddr → slot key. */
  readonly gotSlots = new Map<bigint, string>();
  /** Slot key → GOT slot vaddr (first slot of that key). */
  readonly gotByKey = new Map<string, bigint>();
  /** PLT stub start vaddr → key of the GOT slot it jumps through. */
  readonly pltStubs = new Map<bigint, string>();
  readonly pltByKey = new Map<string, bigint>();
  /** Relocations of executable sections kept by --emit-relocs, by the vaddr of the field. */
  readonly codeRelocations = new Map<bigint, ElfRelocation>();
  /** Relocations of data (dynamic, and --emit-relocs for data sections), by field vaddr. */
  readonly dataRelocations = new Map<bigint, ElfRelocation>();
  /** The build kept static relocations (`-Wl,--emit-relocs`). */
  readonly hasEmitRelocs: boolean;
  /** ET_EXEC: absolute addresses in code are possible (non-PIE). */
  readonly isFixedAddress: boolean;
  readonly buildId: string | null;
  /** The separate debug file the symbols came from, when the build itself is stripped. */
  readonly debugElf?: ElfFile;
  readonly tls: { memsz: bigint; filesz: bigint; align: bigint; vaddr: bigint } | null;
  #imageLow = 0n;
  #imageHigh = 0n;
  #pltSections: ElfSection[] = [];
  #gotSections: ElfSection[] = [];
  #unitNames: ReadonlyMap<string, string> = new Map();

  constructor(bytes: Uint8Array, options: ImageOptions) {
    this.label = options.label;
    // A plain Uint8Array view: Node's Buffer.slice() does not copy, and the builder relies on
    // slice() copies of views into the file.
    this.bytes = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.elf = parseElf(this.bytes, { name: options.label });
    const elf = this.elf;
    if (options.debug) {
      const d = parseElf(options.debug.bytes, { name: options.debug.name });
      if (d.buildId === null || d.buildId !== elf.buildId) {
        throw new HotpatchError(
          'BUILD_DEBUG_MISMATCH',
          `${options.debug.name} (build-id ${d.buildId ?? 'none'}) is not the debug file of ${options.label} (build-id ${elf.buildId ?? 'none'}): give the debug file or unstripped copy of exactly this build`,
        );
      }
      if (d.symbols.length === 0) throw new HotpatchError('BUILD_NO_SYMTAB', `${options.debug.name} has no symbol table (.symtab) either: it cannot name the functions of ${options.label}`);
      elf.adoptSymbols(d);
      this.debugElf = d;
    }
    if (elf.symbols.length === 0) {
      throw new HotpatchError(
        'BUILD_NO_SYMTAB',
        `${options.label} has no symbol table (.symtab): the builder matches functions by symbol. For a stripped file, give its symbols: an unstripped copy or separate debug file of the same build (--old-debug/--new-debug FILE), or install its debug package so that /usr/lib/debug/.build-id/${elf.buildId ? `${elf.buildId.slice(0, 2)}/${elf.buildId.slice(2)}.debug` : 'XX/YYYY.debug'} exists`,
      );
    }
    this.isFixedAddress = elf.header.type === ET_EXEC;
    this.buildId = elf.buildId;
    this.allocSections = elf.sections
      .filter((s) => (s.flags & SHF_ALLOC) !== 0 && s.size > 0n && (s.flags & SHF_TLS) === 0)
      .sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
    if (this.allocSections.length > 0) {
      this.#imageLow = this.allocSections[0]!.addr;
      this.#imageHigh = this.allocSections.reduce((m, s) => (s.addr + s.size > m ? s.addr + s.size : m), 0n);
    }
    const tlsPh = elf.programHeaders.find((p) => p.type === PT_TLS);
    this.tls = tlsPh ? { memsz: tlsPh.memsz, filesz: tlsPh.filesz, align: tlsPh.align, vaddr: tlsPh.vaddr } : null;
    this.#pltSections = elf.sections.filter((s) => PLT_SECTIONS.includes(s.name) && s.size > 0n);
    this.#gotSections = elf.sections.filter((s) => GOT_SECTIONS.includes(s.name) && s.size > 0n);
    if (options.unitNames) this.#unitNames = options.unitNames(elf.symbols);
    this.#indexSymbols();
    let emit = false;
    for (const rs of elf.relocationSections) {
      if ((rs.section.flags & SHF_ALLOC) !== 0) continue; // dynamic relocations: below
      const target = rs.target;
      if (!target || (target.flags & SHF_ALLOC) === 0) continue;
      emit = true;
      const into = (target.flags & SHF_EXECINSTR) !== 0 ? this.codeRelocations : this.dataRelocations;
      for (const r of rs.relocations) into.set(r.offset, r);
    }
    this.hasEmitRelocs = emit;
    const dyn = elf.dynamicRelocations;
    for (const r of [...dyn.rela, ...dyn.plt, ...dyn.rel]) this.dataRelocations.set(r.offset, r);
    for (const a of dyn.relr) {
      if (!this.dataRelocations.has(a)) this.dataRelocations.set(a, { offset: a, type: R_X86_64_RELATIVE, symbolIndex: 0, addend: this.#readU64(a) ?? 0n });
    }
    this.#indexGot();
    this.#indexPlt();
  }

  /** The unit name used in keys for a local of STT_FILE `file` (the old build's name of a renamed unit). */
  keyFile(file: string | undefined): string {
    return file === undefined ? '' : (this.#unitNames.get(file) ?? file);
  }

  #symbolKey(s: ElfSymbol): string {
    return s.bind === STB_LOCAL ? `L:${this.keyFile(s.file)}:${s.name}` : `G:${s.name}`;
  }

  #indexSymbols(): void {
    const funcsAt = new Map<bigint, ElfSymbol[]>();
    const seenKeys = new Map<string, number>();
    const uniqueKey = (base: string): string => {
      const n = (seenKeys.get(base) ?? 0) + 1;
      seenKeys.set(base, n);
      return n === 1 ? base : `${base}#${n}`;
    };
    const syms = [...this.elf.symbols].filter((s) => s.shndx !== SHN_UNDEF && s.name !== '');
    syms.sort((a, b) => (a.value < b.value ? -1 : a.value > b.value ? 1 : a.index - b.index));
    for (const s of syms) {
      if ((s.type === STT_FUNC || s.type === STT_GNU_IFUNC) && s.size > 0n && s.shndx < 0xff00) {
        const sec = this.elf.sections[s.shndx];
        if (!sec || (sec.flags & SHF_EXECINSTR) === 0) continue;
        const l = funcsAt.get(s.value);
        if (l) l.push(s);
        else funcsAt.set(s.value, [s]);
      } else if ((s.type === STT_OBJECT || s.type === STT_TLS || s.type === STT_COMMON) && s.shndx !== SHN_ABS) {
        if (s.shndx === SHN_COMMON) continue;
        const sec = this.elf.sections[s.shndx];
        if (!sec) continue;
        const tls = s.type === STT_TLS || (sec.flags & SHF_TLS) !== 0;
        const kind: ObjectKind = tls
          ? 'tls'
          : (sec.flags & SHF_WRITE) === 0
            ? 'readonly'
            : sec.name.startsWith('.data.rel.ro') || sec.name === '.got' || sec.name === '.dynamic'
              ? 'relro'
              : 'writable';
        const o: ObjectInfo = {
          key: uniqueKey(this.#symbolKey(s)),
          name: s.name,
          vaddr: s.value,
          end: s.value + s.size,
          size: Number(s.size),
          kind,
          section: sec,
          symbol: s,
        };
        if (s.bind === STB_LOCAL && s.file !== undefined) o.file = s.file;
        if (tls) this.tlsObjects.set(o.key, o);
        else {
          this.objects.push(o);
          this.objectsByKey.set(o.key, o);
        }
      }
    }
    for (const [vaddr, list] of [...funcsAt.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      // Primary name: a global if there is one (stable across builds), else the first local.
      list.sort((a, b) => (a.bind === STB_LOCAL ? 1 : 0) - (b.bind === STB_LOCAL ? 1 : 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const s = list[0]!;
      const size = list.reduce((m, q) => (q.size > m ? q.size : m), 0n);
      if (size > 0xffff_ffffn) continue;
      const f: FunctionInfo = {
        key: uniqueKey(this.#symbolKey(s)),
        name: s.name,
        vaddr,
        end: vaddr + size,
        size: Number(size),
        global: s.bind !== STB_LOCAL,
        aliases: list.slice(1).map((q) => q.name),
        section: this.elf.sections[s.shndx]!,
        index: this.functions.length,
      };
      if (s.bind === STB_LOCAL && s.file !== undefined) f.file = s.file;
      this.functions.push(f);
      this.functionsByKey.set(f.key, f);
    }
    this.objects.sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0));
  }

  #readU64(vaddr: bigint): bigint | undefined {
    try {
      const b = this.elf.readVaddr(vaddr, 8);
      return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
    } catch {
      return undefined;
    }
  }

  /**
   * What a relocated data field points to: the address in this build when it is one (static
   * relocations, RELATIVE), with its build-independent key.
   */
  dataPointer(r: ElfRelocation): { key: string; addr?: bigint } {
    const s = r.symbol;
    if (s && s.type === STT_SECTION) {
      const addr = BigInt.asUintN(64, (this.elf.sections[s.shndx]?.addr ?? 0n) + r.addend);
      return { key: `addr:${this.#pointerKey(addr)}`, addr };
    }
    if (r.type === R_X86_64_RELATIVE || r.type === R_X86_64_IRELATIVE) return { key: this.relocationKey(r), addr: r.addend };
    if (s && s.shndx !== SHN_UNDEF && !s.dynamic && (r.type === R_X86_64_64 || r.type === R_X86_64_GLOB_DAT)) {
      const addr = BigInt.asUintN(64, s.value + r.addend);
      return { key: `addr:${this.#pointerKey(addr)}`, addr };
    }
    return { key: this.relocationKey(r) };
  }

  /**
   * Content signature of a data object: its bytes, with every pointer field (relocated, or in
   * non-PIE code an 8-byte word holding an address of the image) replaced by what it points to.
   */
  objectSignature(o: ObjectInfo): string {
    const cached = this.#objSig.get(o.key);
    if (cached !== undefined) return cached;
    let bytes: Uint8Array;
    try {
      bytes = o.kind === 'tls' ? new Uint8Array(0) : this.elf.readVaddr(o.vaddr, o.size);
    } catch {
      bytes = new Uint8Array(0);
    }
    const parts: string[] = [];
    let last = 0;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let off = 0; off + 8 <= bytes.length; off++) {
      const r = this.dataRelocations.get(o.vaddr + BigInt(off));
      let key: string | undefined;
      if (r) key = this.dataPointer(r).key;
      else if (this.isFixedAddress && !this.hasEmitRelocs && off % 8 === 0) {
        const v = dv.getBigUint64(off, true);
        if (v !== 0n && this.isImageAddress(v)) key = `addr:${this.#pointerKey(v)}`;
      }
      if (key === undefined) continue;
      parts.push(Buffer.from(bytes.subarray(last, off)).toString('hex'), `<${key}>`);
      last = off + 8;
      off += 7;
    }
    parts.push(Buffer.from(bytes.subarray(last)).toString('hex'));
    const sig = parts.join('');
    this.#objSig.set(o.key, sig);
    return sig;
  }

  #objSig = new Map<string, string>();

  /** Key of what a dynamic relocation makes a pointer-sized slot hold. */
  relocationKey(r: ElfRelocation): string {
    const s = r.symbol;
    const sym = s && s.name !== '' ? `${s.name}${s.version ? `@${s.version.name}` : ''}` : undefined;
    switch (r.type) {
      case R_X86_64_GLOB_DAT:
      case R_X86_64_JUMP_SLOT:
      case R_X86_64_64:
        if (sym !== undefined) return `sym:${sym}${r.addend !== 0n && r.type === R_X86_64_64 ? `+${r.addend}` : ''}`;
        return `addr:${this.#pointerKey(r.addend)}`;
      case R_X86_64_RELATIVE:
        return `addr:${this.#pointerKey(r.addend)}`;
      case R_X86_64_IRELATIVE:
        return `ifunc:${this.#pointerKey(r.addend)}`;
      case R_X86_64_TPOFF64:
        return `tpoff:${sym ?? `@${r.addend}`}`;
      case R_X86_64_DTPMOD64: {
        const next = this.dataRelocations.get(r.offset + 8n);
        const off =
          next && next.type === R_X86_64_DTPOFF64
            ? next.symbol && next.symbol.name !== ''
              ? next.symbol.name
              : `@${next.addend}`
            : `@${this.#readU64(r.offset + 8n) ?? 0n}`;
        return `tlsgd:${sym ?? 'self'}:${off}`;
      }
      case R_X86_64_DTPOFF64:
        return `dtpoff:${sym ?? `@${r.addend}`}`;
      default:
        return `r${r.type}:${sym ?? ''}+${r.addend}`;
    }
  }

  #pointerKey(addr: bigint): string {
    const t = this.symbolize(addr);
    if (t.t === 'anon') return `anon:${this.anonSignature(addr)}`;
    return targetString(t);
  }

  #indexGot(): void {
    for (const sec of this.#gotSections) {
      for (let a = sec.addr; a + 8n <= sec.addr + sec.size; a += 8n) {
        const r = this.dataRelocations.get(a);
        let key: string;
        if (r && (r.type !== R_X86_64_64 || r.symbol !== undefined || this.isFixedAddress === false)) key = this.relocationKey(r);
        else {
          // Resolved by the static link (non-PIE GOT entries, or .got.plt's reserved words).
          const v = this.#readU64(a) ?? 0n;
          key = this.isImageAddress(v) && v !== 0n ? `addr:${this.#pointerKey(v)}` : `const:${sec.name}:${a - sec.addr < 24n && sec.name === '.got.plt' ? `reserved${a - sec.addr}` : v.toString(16)}`;
        }
        this.gotSlots.set(a, key);
        if (!this.gotByKey.has(key)) this.gotByKey.set(key, a);
      }
    }
  }

  #indexPlt(): void {
    const jmprel = this.elf.dynamicRelocations.plt;
    for (const sec of this.#pltSections) {
      const data = this.elf.sectionData(sec);
      const es = sec.entsize === 8n || sec.entsize === 16n ? Number(sec.entsize) : 16;
      const insns = decodeFunction(data, sec.addr, { text: false });
      let i = 0;
      for (let off = 0; off + es <= data.length; off += es) {
        const start = sec.addr + BigInt(off);
        const end = start + BigInt(es);
        let key: string | undefined;
        while (i < insns.length && insns[i]!.address < start) i++;
        for (let j = i; j < insns.length && insns[j]!.address < end; j++) {
          const ins = insns[j]!;
          if (ins.mnemonic === 'jmp' && ins.memory?.ripRelative && ins.memory.target !== undefined) {
            const slot = this.gotSlots.get(ins.memory.target);
            if (slot !== undefined) key = slot;
            break;
          }
          if (ins.mnemonic === 'push' && ins.immediates && ins.immediates.length > 0 && sec.name === '.plt') {
            const r = jmprel[Number(ins.immediates[0]!)];
            if (r) key = this.relocationKey(r);
            // keep looking: a jmp through the GOT in the same stub names it better
          }
        }
        if (key === undefined) continue; // PLT0 or padding
        this.pltStubs.set(start, key);
        // .plt.sec stubs are what code calls when both exist: prefer them in the reverse map.
        if (!this.pltByKey.has(key) || sec.name !== '.plt') this.pltByKey.set(key, start);
      }
    }
  }

  /** True when `v` lies inside an allocated (non-TLS) section of this build. */
  isImageAddress(v: bigint): boolean {
    return v >= this.#imageLow && v < this.#imageHigh && this.sectionAt(v) !== undefined;
  }

  sectionAt(addr: bigint): ElfSection | undefined {
    const i = lowerBound(this.allocSections, addr, (s) => s.addr);
    for (let k = i; k >= 0 && k >= i - 2; k--) {
      const s = this.allocSections[k]!;
      if (addr >= s.addr && addr < s.addr + s.size) return s;
    }
    return undefined;
  }

  functionAt(addr: bigint): FunctionInfo | undefined {
    const i = lowerBound(this.functions, addr, (f) => f.vaddr);
    if (i < 0) return undefined;
    const f = this.functions[i]!;
    return addr < f.end ? f : undefined;
  }

  objectAt(addr: bigint): ObjectInfo | undefined {
    const i = lowerBound(this.objects, addr, (o) => o.vaddr);
    for (let k = i; k >= 0 && k >= i - 4; k--) {
      const o = this.objects[k]!;
      if (addr >= o.vaddr && (addr < o.end || (o.size === 0 && addr === o.vaddr))) return o;
    }
    return undefined;
  }

  /** Turns an address of this build into a build-independent reference. */
  symbolize(addr: bigint): RefTarget {
    const sec = this.sectionAt(addr);
    if (sec) {
      if (this.#pltSections.includes(sec)) {
        const start = sec.addr + ((addr - sec.addr) / 16n) * 16n;
        const key = this.pltStubs.get(start) ?? this.pltStubs.get(sec.addr + ((addr - sec.addr) / 8n) * 8n);
        if (key !== undefined) return { t: 'plt', key, off: Number(addr - start) };
      }
      if (this.#gotSections.includes(sec)) {
        const slot = addr - ((addr - sec.addr) % 8n);
        const key = this.gotSlots.get(slot);
        if (key !== undefined) return { t: 'got', key, off: Number(addr - slot) };
      }
    }
    const f = this.functionAt(addr);
    if (f) return { t: 'func', key: f.key, off: Number(addr - f.vaddr) };
    const o = this.objectAt(addr);
    if (o) return { t: 'obj', key: o.key, off: Number(addr - o.vaddr) };
    if (sec && (sec.flags & SHF_WRITE) === 0 && (sec.flags & SHF_EXECINSTR) === 0) return { t: 'anon', section: sec.name, addr };
    // Anything else (section ends, linker-defined NOTYPE symbols...): the nearest symbol before it.
    const near = this.elf.findSymbolByAddress(addr);
    if (near && near.offset <= 0x10000n) {
      const s = near.symbol;
      return { t: 'near', key: this.#symbolKey(s), off: near.offset };
    }
    if (sec) return { t: 'near', key: `section:${sec.name}`, off: addr - sec.addr };
    return { t: 'abs', value: addr };
  }

  /**
   * Content signature of anonymous read-only data at `addr`: a C string (up to its NUL) when the
   * bytes look like one, else up to 16 bytes (callers compare blobs with `anonBytes`).
   */
  anonSignature(addr: bigint): string {
    const s = this.anonString(addr);
    if (s) return `str:${Buffer.from(s).toString('hex')}`;
    return `blob:${Buffer.from(this.readSome(addr, 16)).toString('hex')}`;
  }

  /** The bytes of a C string at `addr` (with its NUL), when they look like text; else undefined. */
  anonString(addr: bigint): Uint8Array | undefined {
    const sec = this.sectionAt(addr);
    if (!sec) return undefined;
    const max = Number(sec.addr + sec.size - addr < 65536n ? sec.addr + sec.size - addr : 65536n);
    const bytes = this.readSome(addr, max);
    const nul = bytes.indexOf(0);
    if (nul < 0) return undefined;
    for (let i = 0; i < nul; i++) {
      const c = bytes[i]!;
      if (c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d && c !== 0x1b) return undefined;
      if (c === 0x7f) return undefined;
    }
    return bytes.subarray(0, nul + 1);
  }

  /** Up to `n` bytes of the memory image at `addr` (fewer at the end of its segment). */
  readSome(addr: bigint, n: number): Uint8Array {
    const sec = this.sectionAt(addr);
    let len = n;
    if (sec) {
      const left = sec.addr + sec.size - addr;
      if (left < BigInt(len)) len = Number(left);
    }
    try {
      return this.elf.readVaddr(addr, len);
    } catch {
      return new Uint8Array(0);
    }
  }

  /** The bytes of a function as in the file. */
  functionBytes(f: FunctionInfo): Uint8Array {
    return this.elf.readVaddr(f.vaddr, f.size);
  }

  /** SHA-256 hex of bytes. */
  static sha256(bytes: Uint8Array): string {
    return createHash('sha256').update(bytes).digest('hex');
  }

  /**
   * Sorted addresses where a piece of read-only data may start (symbols, section starts and ends,
   * addresses referenced from code or from relocated data). Set by the builder after it has
   * normalised every function; bounds anonymous data (`anonExtent`).
   */
  boundaries: bigint[] = [];

  /** Bytes from `addr` to the next boundary (at most `cap`), for anonymous data. */
  anonExtent(addr: bigint, cap = 4096): number {
    const b = this.boundaries;
    let lo = 0;
    let hi = b.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    const next = lo < b.length ? b[lo]! : addr + BigInt(cap);
    const d = next - addr;
    return d > BigInt(cap) ? cap : Number(d);
  }

  /** True for addresses in an executable section. */
  isCode(addr: bigint): boolean {
    const s = this.sectionAt(addr);
    return s !== undefined && (s.flags & SHF_EXECINSTR) !== 0;
  }
}
