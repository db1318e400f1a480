/**
 * The builder: two builds of one program or library (the running one and the fixed one) → the
 * patch plan holding exactly the functions whose code changed, or a refusal naming every reason.
 *
 * Steps: load both builds; normalise every function of both (see normalize.ts); match functions by
 * key (name, and STT_FILE for locals); compare; close the changed set over groups of functions that
 * enter each other other than at the entry (gcc's `.cold` parts); run the whole-build checks
 * (exports, imports, data, TLS, code addresses in data); emit the plan.
 */
import { basename } from 'node:path';
import { HotpatchError } from '../../errors.js';
import type { PatchPlan } from '../plan.js';
import { checkData, checkExports, checkImports, checkStructs } from './checks.js';
import { Comparator, type Difference } from './compare.js';
import { Emitter } from './emit.js';
import { BuildImage, displayKey, type FunctionInfo } from './image.js';
import { normalizeFunction, type NormalFunction } from './normalize.js';
import { BuildRefusedError, RefusalCode, type Refusal } from './refusal.js';
import { pairUnits, type UnitPairing } from './units.js';
import { carryUnwind } from './unwind.js';

/** Options of {@link buildPatch}. */
export interface BuildOptions {
  /** File name of the running build (the target name in the plan; default "target"). */
  oldName?: string;
  /** File name of the fixed build, for messages. */
  newName?: string;
  /** Symbols (and DWARF) of a stripped old build: its debug file or unstripped copy (same build-id). */
  oldDebug?: { bytes: Uint8Array; name: string };
  /** Likewise for the new build. */
  newDebug?: { bytes: Uint8Array; name: string };
  /**
   * Compilation units of the new build to pair with a unit of another name in the running build
   * (new STT_FILE name → old one), when pairing by content is ambiguous (REFUSED_UNITS_UNPAIRED).
   */
  units?: Readonly<Record<string, string>>;
  /** Receives progress lines (the CLI prints them on stderr). */
  progress?: (message: string) => void;
}

/** One changed function as reported to the user. */
export interface ChangedFunctionReport {
  name: string;
  file?: string;
  /** Link-time vaddr and size of the running function. */
  vaddr: bigint;
  oldSize: number;
  newSize: number;
  /** Bytes of new code carried (the function and any parts appended to it). */
  codeSize: number;
  relocations: number;
  entry: 'padded' | 'plain';
  /** How the entry was recognised (patchable-function-entry, padding, plain...). */
  entryForm: string;
  /** Why the function counts as changed. */
  reason: string;
  /** Functions carried inside this one's code (cold parts, helpers new in the fixed build). */
  appended: string[];
}

/** Everything the builder found, besides the plan. */
export interface BuildReport {
  changed: ChangedFunctionReport[];
  /** Data carried; `writable`: a variable the fix adds (in the patch's writable area). */
  data: { name: string; size: number; relocations: number; writable: boolean }[];
  warnings: string[];
  stats: {
    oldFunctions: number;
    newFunctions: number;
    matched: number;
    instructions: number;
    millis: number;
  };
  emitRelocs: { old: boolean; new: boolean };
  /** GNU build-id of the fixed build (for the cold payload), or null. */
  newBuildId: string | null;
}

export interface BuildResult {
  plan: PatchPlan;
  report: BuildReport;
}

const COLD = /\.cold(?:\.\d+)?$/;
const CRT_FILES = new Set(['crtstuff.c', 'crt1.o', 'crti.o', 'crtn.o', 'start.S', 'init.c', 'static-reloc.c']);
const CRT_FUNCTIONS = new Set(['G:_start', 'G:_init', 'G:_fini', 'G:__libc_csu_init', 'G:__libc_csu_fini', 'L::_init', 'L::_fini']);

class UnionFind {
  readonly #parent = new Map<string, string>();
  find(x: string): string {
    let root = x;
    for (let p = this.#parent.get(root); p !== undefined && p !== root; p = this.#parent.get(root)) root = p;
    // Path compression.
    for (let y = x, p = this.#parent.get(y); p !== undefined && p !== root; y = p, p = this.#parent.get(y)) this.#parent.set(y, root);
    return root;
  }
  union(a: string, b: string): void {
    const ra = this.find(a);
    const rb = this.find(b);
    if (ra !== rb) this.#parent.set(ra, rb);
  }
}

function isCrt(f: FunctionInfo): boolean {
  return CRT_FUNCTIONS.has(f.key) || (f.file !== undefined && CRT_FILES.has(f.file));
}

/**
 * Diffs two builds into a patch plan. Throws BuildRefusedError (a RefusedError) listing every
 * refusal, HotpatchError BUILD_NO_SYMTAB / BUILD_NO_BUILD_ID / BUILD_DIFFERENT_PROGRAMS /
 * BUILD_NO_CHANGES / BUILD_MISMATCH for inputs that cannot be diffed, ElfError for non-ELF input.
 */
export function buildPatch(oldBytes: Uint8Array, newBytes: Uint8Array, options: BuildOptions = {}): BuildResult {
  const t0 = performance.now();
  const progress = options.progress ?? (() => {});
  const oldName = options.oldName ?? 'target';
  const old = new BuildImage(oldBytes, { label: `old build ${oldName}`, ...(options.oldDebug ? { debug: options.oldDebug } : {}) });
  let units: UnitPairing = { renamed: new Map() };
  const neu = new BuildImage(newBytes, {
    label: `new build ${options.newName ?? 'new'}`,
    ...(options.newDebug ? { debug: options.newDebug } : {}),
    unitNames: (symbols) => (units = pairUnits(old.elf.symbols, symbols, options.units)).renamed,
  });
  if (old.elf.header.type !== neu.elf.header.type || old.elf.isSharedLibrary !== neu.elf.isSharedLibrary) {
    throw new HotpatchError(
      'BUILD_MISMATCH',
      `the old build is ${kindOf(old)} and the new build is ${kindOf(neu)}: build the fix exactly like the running file (same compiler, flags and link options)`,
    );
  }
  if (!old.buildId) {
    throw new HotpatchError('BUILD_NO_BUILD_ID', `${oldName} has no GNU build-id note: the package must name the running build exactly; link with -Wl,--build-id`);
  }
  progress(`loaded ${old.functions.length} functions (old) and ${neu.functions.length} functions (new)`);
  // Keyed under wrong unit names, every static would be a difference: this one refusal says it all.
  if (units.refusal) throw new BuildRefusedError([units.refusal]);
  for (const [n, o] of units.renamed) progress(`compilation unit ${n} of the new build paired with ${o} of the running build`);

  // Normalise every function of both builds (also collects the boundaries of anonymous data).
  let instructions = 0;
  const normAll = (img: BuildImage, which: string): Map<string, NormalFunction> => {
    const m = new Map<string, NormalFunction>();
    const n = img.functions.length;
    let next = Date.now() + 1000;
    img.functions.forEach((f, i) => {
      const nf = normalizeFunction(img, f);
      instructions += nf.instructionCount;
      m.set(f.key, nf);
      if (Date.now() > next) {
        progress(`decoding ${which} build: ${i + 1}/${n} functions`);
        next = Date.now() + 1000;
      }
    });
    setBoundaries(img, m);
    return m;
  };
  const oldNorm = normAll(old, 'old');
  const newNorm = normAll(neu, 'new');

  // Match and compare.
  const cmp = new Comparator(old, neu);
  const differences = new Map<string, Difference>();
  let matched = 0;
  let matchedUser = 0;
  for (const [key, nb] of newNorm) {
    const na = oldNorm.get(key);
    if (!na) continue;
    matched++;
    if (!isCrt(nb.fn)) matchedUser++;
    const d = cmp.difference(na, nb);
    if (d) differences.set(key, d);
  }
  const userNew = neu.functions.filter((f) => !isCrt(f)).length;
  const userOld = old.functions.filter((f) => !isCrt(f)).length;
  // Two builds of one program share most functions, and most of those are unchanged. Unrelated
  // programs share at most a few names (main...), each different: one error, not one refusal per
  // export and data object.
  const unchangedUser = matchedUser - [...differences.keys()].filter((k) => !isCrt(neu.functionsByKey.get(k)!)).length;
  const userMax = Math.max(userOld, userNew);
  const onlyMain = [...newNorm.keys()].every((k) => !oldNorm.has(k) || isCrt(neu.functionsByKey.get(k)!) || k === 'G:main');
  const unrelated = matchedUser === 0 || (unchangedUser === 0 && matchedUser * 2 <= userMax && (userMax >= 4 || onlyMain));
  if (unrelated && userNew > 0 && userOld > 0) {
    throw new HotpatchError(
      'BUILD_DIFFERENT_PROGRAMS',
      `${oldName} and ${options.newName ?? 'the new build'} have no function in common${matchedUser > 0 ? ` but ${matchedUser} name(s), each with other code` : ''}: they are different programs, not two builds of one; pass the running build as --old and its fixed build as --new`,
    );
  }
  progress(`compared ${matched} matched functions: ${differences.size} changed`);

  // Groups: functions entered other than at their entry (cold parts) change together.
  const uf = new UnionFind();
  const link = (img: BuildImage, norm: Map<string, NormalFunction>) => {
    for (const nf of norm.values()) {
      const m = COLD.exec(nf.fn.name);
      if (m) {
        // gcc's `foo.cold` is a local of foo's file; foo itself may be global.
        const parentName = nf.fn.name.slice(0, m.index);
        const candidates = [`L:${img.keyFile(nf.fn.file)}:${parentName}`, `G:${parentName}`];
        const parentKey = candidates.find((k) => img.functionsByKey.has(k));
        if (parentKey !== undefined) uf.union(nf.fn.key, parentKey);
      }
      for (const r of nf.refs) if (r.target.t === 'func' && r.target.off !== 0 && r.target.key !== nf.fn.key) uf.union(nf.fn.key, r.target.key);
      for (const t of nf.tables) {
        for (const a of t.targets) {
          const g = img.functionAt(a);
          if (g && g.key !== nf.fn.key) uf.union(nf.fn.key, g.key);
        }
      }
    }
  };
  link(old, oldNorm);
  link(neu, newNorm);
  const changedRoots = new Set<string>();
  for (const k of differences.keys()) changedRoots.add(uf.find(k));
  const changed = new Set<string>();
  for (const f of neu.functions) if (changedRoots.has(uf.find(f.key)) && (oldNorm.has(f.key) || COLD.test(f.name))) changed.add(f.key);
  for (const k of differences.keys()) changed.add(k);

  // Whole-build refusals.
  const refusals: Refusal[] = [...checkExports(old, neu), ...checkImports(old, neu), ...checkData(old, neu)];
  refusals.push(...checkCodeAddressesInData(old, neu, changed));
  const changedFns = [...changed].map((k) => neu.functionsByKey.get(k)!).map((f) => (f.file !== undefined ? { name: f.name, file: neu.keyFile(f.file), newFile: f.file } : { name: f.name }));
  const structs = checkStructs(old, neu, changedFns);
  refusals.push(...structs.refusals);

  if (changed.size === 0 && refusals.length === 0) {
    throw new HotpatchError(
      'BUILD_NO_CHANGES',
      `no function differs between ${oldName} and ${options.newName ?? 'the new build'} (address shifts aside): there is nothing to patch`,
    );
  }

  // Emit: entries in old-address order; cold parts and new helpers are appended to their users.
  const oldBranchTargets = new Set<bigint>();
  for (const nf of oldNorm.values()) for (const r of nf.refs) if (r.kind === 'pc' && r.target.t === 'func' && r.target.off > 0 && r.target.off < 16) oldBranchTargets.add(r.addr);
  const emitter = new Emitter(old, neu, (f) => newNorm.get(f.key) ?? normalizeFunction(neu, f), changed, oldBranchTargets);
  // A cold part travels inside a changed function of its group; without one it is redirected itself.
  const hostedRoots = new Set([...changed].filter((k) => !COLD.test(neu.functionsByKey.get(k)!.name) && old.functionsByKey.has(k)).map((k) => uf.find(k)));
  const entries = [...changed]
    .filter((k) => old.functionsByKey.has(k) && (!COLD.test(neu.functionsByKey.get(k)!.name) || !hostedRoots.has(uf.find(k))))
    .sort((a, b) => {
      const x = old.functionsByKey.get(a)!.vaddr;
      const y = old.functionsByKey.get(b)!.vaddr;
      return x < y ? -1 : x > y ? 1 : 0;
    });
  for (const k of entries) emitter.addEntry(old.functionsByKey.get(k)!, newNorm.get(k)!);
  emitter.finish();
  const unwind = carryUnwind(emitter);
  const result = emitter.finish(); // relocates anything the unwind pointers brought in
  refusals.push(...result.refusals);
  if (refusals.length > 0) throw new BuildRefusedError(refusals);

  const plan: PatchPlan = {
    target: { buildId: old.buildId, name: basename(oldName), size: oldBytes.length },
    functions: result.functions,
    data: result.data,
  };
  if (unwind.unwind) plan.unwind = unwind.unwind;
  const warnings: string[] = [];
  if (!structs.checked) warnings.push('no DWARF in both builds (-g): struct layout changes used by changed functions were not checked');
  if (old.isFixedAddress && !old.hasEmitRelocs) {
    warnings.push('non-PIE build without -Wl,--emit-relocs: absolute addresses in code were recognised by value; link with -Wl,--emit-relocs for exact relocations');
  }
  if (unwind.missing.length > 0) {
    const list = unwind.missing.slice(0, 5).map((m) => `${m.name} (${m.reason})`).join(', ');
    warnings.push(`C++ build: no unwind information is carried for ${list}${unwind.missing.length > 5 ? ` and ${unwind.missing.length - 5} more` : ''}: an exception thrown in or passing through such a function terminates the process`);
  }
  const carried = new Set(result.appended.map((a) => a.key));
  const unused = neu.functions.filter((f) => !old.functionsByKey.has(f.key) && !carried.has(f.key) && !isCrt(f)).map((f) => displayKey(f.key));
  if (unused.length > 0) {
    warnings.push(`function(s) only in the new build and not called by changed code, not carried: ${unused.slice(0, 10).join(', ')}${unused.length > 10 ? ` and ${unused.length - 10} more` : ''}`);
  }
  const plainCount = result.functions.filter((f) => f.entry.kind === 'plain').length;
  if (plainCount > 0) {
    warnings.push(`${plainCount} function(s) have no padded entry and get a 5-byte jump over their first instructions; build with -fpatchable-function-entry=7,5 for atomic 2-byte switches`);
  }
  const report: BuildReport = {
    changed: result.functions.map((f, i) => {
      const key = entries[i]!;
      const nf = newNorm.get(key)!;
      const of = old.functionsByKey.get(key)!;
      const r: ChangedFunctionReport = {
        name: f.name,
        vaddr: f.vaddr,
        oldSize: of.size,
        newSize: nf.fn.size,
        codeSize: f.code.length,
        relocations: f.relocations.length,
        entry: f.entry.kind,
        entryForm: result.entryForms[i] ?? f.entry.kind,
        reason: differences.get(key)?.reason ?? 'changes with a function it shares code with (cold part)',
        appended: result.appended.filter((a) => a.host === i).map((a) => displayKey(a.key)),
      };
      if (f.file !== undefined) r.file = f.file;
      return r;
    }),
    data: result.data.map((d) => ({ name: d.name, size: d.bytes.length, relocations: d.relocations.length, writable: d.writable === true })),
    warnings,
    stats: {
      oldFunctions: old.functions.length,
      newFunctions: neu.functions.length,
      matched,
      instructions,
      millis: Math.round(performance.now() - t0),
    },
    emitRelocs: { old: old.hasEmitRelocs, new: neu.hasEmitRelocs },
    newBuildId: neu.buildId,
  };
  return { plan, report };
}

function kindOf(img: BuildImage): string {
  if (img.elf.isSharedLibrary) return 'a shared library';
  if (img.elf.isPie) return 'a PIE executable';
  return img.isFixedAddress ? 'a non-PIE executable' : 'an ELF file';
}

/** Every address the build's code and data point at, plus symbol and section limits. */
function setBoundaries(img: BuildImage, norm: Map<string, NormalFunction>): void {
  const set = new Set<bigint>();
  for (const nf of norm.values()) {
    for (const r of nf.refs) set.add(r.addr);
    for (const t of nf.tables) set.add(t.addr);
  }
  for (const o of img.objects) {
    set.add(o.vaddr);
    set.add(o.end);
  }
  for (const s of img.allocSections) {
    set.add(s.addr);
    set.add(s.addr + s.size);
  }
  for (const r of img.dataRelocations.values()) {
    const p = img.dataPointer(r).addr;
    if (p !== undefined) set.add(p);
  }
  img.boundaries = [...set].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Code addresses stored in data objects that point inside a changed function (not at its entry):
 * computed-goto tables and the like. Such an address leads into the old code however the entry is
 * switched, so the indirect jumps through it cannot be bounded to the new code.
 */
function checkCodeAddressesInData(old: BuildImage, neu: BuildImage, changed: ReadonlySet<string>): Refusal[] {
  const out: Refusal[] = [];
  const seen = new Set<string>();
  for (const img of [old, neu]) {
    const pointers: { at: bigint; to: bigint }[] = [];
    for (const r of img.dataRelocations.values()) {
      const to = img.dataPointer(r).addr;
      if (to !== undefined) pointers.push({ at: r.offset, to });
    }
    if (img.isFixedAddress && !img.hasEmitRelocs) {
      for (const o of img.objects) {
        if (o.size < 8 || o.size > 1 << 20) continue;
        const b = img.readSome(o.vaddr, o.size);
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        for (let off = 0; off + 8 <= b.length; off += 8) pointers.push({ at: o.vaddr + BigInt(off), to: dv.getBigUint64(off, true) });
      }
    }
    for (const p of pointers) {
      const f = img.functionAt(p.to);
      if (!f || p.to === f.vaddr || !changed.has(f.key)) continue;
      const o = img.objectAt(p.at);
      if (!o) continue; // anonymous tables (switch jump tables) are recognised and carried
      const k = `${f.key}|${o.key}`;
      if (seen.has(k)) continue;
      seen.add(k);
      out.push({
        code: RefusalCode.UNBOUNDED_INDIRECT_JUMP,
        symbol: displayKey(f.key),
        message: `${displayKey(f.key)}: data object ${displayKey(o.key)} holds the address 0x${p.to.toString(16)} inside the function (+0x${(p.to - f.vaddr).toString(16)}, e.g. a computed-goto table): indirect jumps through it would enter the old code and cannot be bounded to the new code`,
      });
    }
  }
  return out;
}
