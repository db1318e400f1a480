/**
 * Structure 3, import tables (GOT/PLT): every slot the dynamic linker fills (GLOB_DAT, JUMP_SLOT,
 * R_X86_64_64 in RELRO, IRELATIVE) must be unresolved (lazy binding: the file's value, pointing back
 * into the PLT) or bound to the definition the dynamic linker would choose:
 * - lookup in link_map order (the global scope: executable, preloads, DT_NEEDED breadth-first,
 *   then RTLD_GLOBAL libraries); for a library loaded later, also the libraries loaded with it;
 * - symbol versions (a versioned reference needs that version; an unversioned one a default one);
 * - copy relocations (the executable's copy comes first in the scope, so it wins naturally);
 * - IFUNC: the slot holds what the resolver chose — accepted when it equals this verifier's own
 *   process' choice for the same library build, else when it points into the defining module's code;
 * - LD_PRELOAD: a preloaded library's definition is legitimate only if the process was started with
 *   LD_PRELOAD naming it, and is then reported as an info finding ("interposed by LD_PRELOAD").
 * Also the reserved .got.plt words of lazily bound modules: GOT[1] = the module's own link_map,
 * GOT[2] = the loader's resolver.
 */
import { readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import {
  R_X86_64_64,
  R_X86_64_COPY,
  R_X86_64_GLOB_DAT,
  R_X86_64_IRELATIVE,
  R_X86_64_JUMP_SLOT,
  SHN_UNDEF,
  STB_WEAK,
  STT_GNU_IFUNC,
  STV_PROTECTED,
  parseElf,
  type ElfRelocation,
  type ElfSymbol,
} from '../../elf/index.js';
import type { Module } from '../../process/index.js';
import { ProcessContext, type CheckOptions } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';
import { ModuleImage } from '../image.js';
import { linkMapNameMatches, modulesInLoadOrder, readLinkMap, startupOrder, type LinkMapEntry } from './linkmap.js';
import { le64, readWords, u64 } from './words.js';

interface ScopeModule {
  mod: Module;
  img: ModuleImage;
  entry: LinkMapEntry;
  /** Loaded at start-up (executable, preloads, DT_NEEDED closure, loader, vDSO). */
  startup: boolean;
  /**
   * 'env': named by LD_PRELOAD in the process environment; 'file': by /etc/ld.so.preload;
   * 'unnamed': in the preload position of link_map (ahead of start-up modules, outside the
   * DT_NEEDED closure) but named by neither.
   */
  preload?: 'env' | 'file' | 'unnamed';
}

interface Scope {
  /** Start-up modules in the order the files give (startupOrder), then the others in link_map order. */
  modules: ScopeModule[];
  /** Namespace-0 modules in the target's link_map order. */
  linkMapOrder: { mod: Module; entry: LinkMapEntry }[];
}

function splitList(v: string): string[] {
  return v.split(/[\s:]+/).filter((s) => s !== '' && !s.startsWith('#'));
}

function preloadNames(ctx: ProcessContext): { env: string[]; file: string[] } {
  const env = splitList(ctx.environ.get('LD_PRELOAD') ?? '');
  let file: string[] = [];
  try {
    file = splitList(readFileSync('/etc/ld.so.preload', 'utf8'));
  } catch {
    file = [];
  }
  return { env, file };
}

/**
 * Whether the library name `p` (an LD_PRELOAD / LD_AUDIT / ld.so.preload item) names the mapped
 * module: a path is resolved in the target's root (or its cwd when relative) and compared by
 * device and inode with the mapped file; a bare name (searched in the library path) by the file's
 * DT_SONAME or the basename of the mapped path. Never by l_name, which the target can rewrite.
 */
export function libraryNameMatches(ctx: ProcessContext, p: string, mod: Module, img: ModuleImage | null): boolean {
  if (mod.kind === 'vdso') return false;
  if (!p.includes('/')) return basename(mod.path) === p || img?.elf.dynamic?.soname === p;
  if (p === mod.path) return true;
  return ctx.memo(`libname:${p}:${mod.base.toString(16)}`, () => {
    try {
      const named = statSync(p.startsWith('/') ? `/proc/${ctx.pid}/root${p}` : `/proc/${ctx.pid}/cwd/${p}`);
      const mapped = statSync(mod.mapFilesPath ?? mod.path);
      return named.dev === mapped.dev && named.ino === mapped.ino;
    } catch {
      return false;
    }
  });
}

/**
 * The symbol scope of namespace 0, with start-up and preload marks. The start-up modules and their
 * order come from the files (DT_NEEDED breadth-first from the executable and the preloads, names
 * resolved by DT_SONAME and the mapped paths), not from link_map names or order, which the target
 * can rewrite to make a hook look like the expected binding. Memoised per context.
 */
function buildScope(ctx: ProcessContext): Scope {
  return ctx.memo('scope', () => {
    const linkMapOrder = modulesInLoadOrder(ctx).filter((x) => x.entry.namespace === 0);
    const images = new Map<Module, ModuleImage>();
    const usable = linkMapOrder.filter((x) => {
      const img = ctx.image(x.mod) ?? vdsoImage(ctx, x.mod);
      if (img !== null) images.set(x.mod, img);
      return img !== null;
    });
    const pre = preloadNames(ctx);
    const named: { x: { mod: Module; entry: LinkMapEntry }; how: 'env' | 'file' }[] = [];
    for (const [list, how] of [[pre.env, 'env'], [pre.file, 'file']] as const) {
      for (const p of list) {
        const x = usable.find((o) => libraryNameMatches(ctx, p, o.mod, images.get(o.mod) ?? null));
        if (x !== undefined && !named.some((n) => n.x.mod === x.mod)) named.push({ x, how });
      }
    }
    let startup = startupOrder(ctx, usable, named.map((n) => n.x));
    // A module outside the closure that link_map lists ahead of a start-up module sits where only
    // preloads sit (dlopen appends at the end): treat it as a preload, marked 'unnamed'.
    const inStartup = new Set(startup.map((s) => s.mod));
    let last = -1;
    usable.forEach((o, i) => {
      if (inStartup.has(o.mod)) last = i;
    });
    const unnamed = usable.filter((o, i) => i < last && !inStartup.has(o.mod) && o.mod.kind !== 'vdso');
    if (unnamed.length > 0) startup = startupOrder(ctx, usable, [...named.map((n) => n.x), ...unnamed]);
    const modules: ScopeModule[] = [];
    const placed = new Set<Module>();
    const add = (x: { mod: Module; entry: LinkMapEntry }, isStartup: boolean) => {
      if (placed.has(x.mod)) return;
      placed.add(x.mod);
      const sm: ScopeModule = { mod: x.mod, img: images.get(x.mod)!, entry: x.entry, startup: isStartup };
      const n = named.find((y) => y.x.mod === x.mod);
      if (n !== undefined) sm.preload = n.how;
      else if (unnamed.some((y) => y.mod === x.mod)) sm.preload = 'unnamed';
      modules.push(sm);
    };
    for (const s of startup) add(s, true);
    for (const o of usable) if (o.mod.kind === 'vdso') add(o, true);
    for (const o of usable) add(o, false);
    return { modules, linkMapOrder };
  });
}

/** The vDSO has no file: parse its image from memory. */
function vdsoImage(ctx: ProcessContext, mod: Module): ModuleImage | null {
  if (mod.kind !== 'vdso') return null;
  return ctx.memo(`vdso-image`, () => {
    try {
      const len = Number(mod.end - mod.base);
      return new ModuleImage(parseElf(ctx.proc.readMemory(mod.base, len), { name: '[vdso]' }), 'vdso');
    } catch {
      return null;
    }
  });
}


/** Whether definition `def` satisfies the version requirement of reference `ref`. */
function versionMatches(ref: ElfSymbol, def: ElfSymbol): boolean {
  if (def.version === undefined) return true; // unversioned definitions satisfy any reference
  if (ref.version !== undefined) return def.version.name === ref.version.name;
  // Unversioned reference: the default (non-hidden) version.
  return !def.version.hidden;
}

interface Candidate {
  sm: ScopeModule;
  sym: ElfSymbol;
  /** Run-time value the slot would hold (undefined for IFUNC: chosen by the resolver at run time). */
  value?: bigint;
}

/** Definitions the dynamic linker may bind `ref` (referenced from `from`) to. */
function allowedDefinitions(scope: Scope, from: ScopeModule, ref: ElfSymbol, addend: bigint, relocType: number): Candidate[] {
  const defs: Candidate[] = [];
  for (const sm of scope.modules) {
    // The vDSO is on the namespace's module list but in no lookup scope (it is nobody's
    // DT_NEEDED): ld.so never binds a symbol reference to it (an unversioned weak `getrandom`
    // binds to libc's even where the vDSO exports one). IFUNC resolvers may still pick it.
    if (sm.mod.kind === 'vdso') continue;
    // ELF_RTYPE_CLASS_COPY: a copy relocation never binds to the executable's own copy.
    if (relocType === R_X86_64_COPY && sm === from) continue;
    for (const sym of sm.img.exportsNamed(ref.name)) {
      if (!versionMatches(ref, sym)) continue;
      // ELF_RTYPE_CLASS_PLT: a PLT slot never binds to another module's canonical PLT entry.
      if (sym.shndx === SHN_UNDEF && relocType === R_X86_64_JUMP_SLOT) continue;
      const c: Candidate = { sm, sym };
      if (sym.type !== STT_GNU_IFUNC) c.value = BigInt.asUintN(64, sm.mod.loadBias + sym.value + addend);
      defs.push(c);
      break;
    }
  }
  const out: Candidate[] = [];
  const firstStartup = defs.find((d) => d.sm.startup);
  if (firstStartup !== undefined) out.push(firstStartup);
  if (!from.startup || firstStartup === undefined) out.push(...defs.filter((d) => !d.sm.startup));
  // DT_SYMBOLIC or a protected definition: the module's own definition comes first.
  const own = defs.find((d) => d.sm === from);
  if (own !== undefined && (from.img.symbolic || own.sym.visibility === STV_PROTECTED) && !out.includes(own)) out.push(own);
  return out;
}

/** Slot values of `relocs` read from memory in as few reads as possible. */
function readSlots(ctx: ProcessContext, bias: bigint, relocs: readonly ElfRelocation[]): Map<bigint, bigint> {
  return readWords(ctx, bias, relocs.map((r) => r.offset).sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));
}

/** Key of an IFUNC choice: build-id (or file key) of the defining library and the resolver's vaddr. */
function ifuncKey(sm: ScopeModule, resolverVaddr: bigint): string {
  return `${sm.mod.buildId ?? sm.img.key}:${resolverVaddr.toString(16)}`;
}

/**
 * The IFUNC implementations this verifier's own process got from the same libraries: resolver
 * choices depend on the CPU (and tunables), which targets on this machine share.
 */
function ownIfuncChoices(options: CheckOptions): Map<string, string> {
  const caches = options.caches as CheckOptions['caches'] & { ifuncChoices?: Map<string, string> };
  if (caches.ifuncChoices !== undefined) return caches.ifuncChoices;
  const choices = new Map<string, string>();
  caches.ifuncChoices = choices;
  let ctx: ProcessContext | undefined;
  try {
    ctx = new ProcessContext(process.pid, options);
    const scope = buildScope(ctx);
    for (const sm of scope.modules) {
      const relocs = slotRelocations(sm.img);
      const values = readSlots(ctx, sm.mod.loadBias, relocs);
      for (const r of relocs) {
        const v = values.get(r.offset);
        if (v === undefined) continue;
        const where = locationOf(ctx, v);
        if (where === undefined) continue;
        const at = ctx.moduleAt(v);
        if (r.type === R_X86_64_IRELATIVE) {
          if (at === sm.mod || at?.kind === 'vdso') choices.set(ifuncKey(sm, r.addend), where);
          continue;
        }
        if (r.symbol === undefined) continue;
        for (const c of allowedDefinitions(scope, sm, r.symbol, 0n, r.type)) {
          // Only bound slots: a lazy slot not yet called still points into the caller's PLT.
          if (c.sym.type === STT_GNU_IFUNC && (at === c.sm.mod || at?.kind === 'vdso')) choices.set(ifuncKey(c.sm, c.sym.value), where);
        }
      }
    }
  } catch {
    // Without our own choices, IFUNC slots are judged by the "points into the defining module's code" rule.
  } finally {
    ctx?.close();
  }
  return choices;
}

const slotRelocationCache = new WeakMap<ModuleImage, ElfRelocation[]>();

/** Relocations that fill import slots, deduplicated by slot (DT_RELA and DT_JMPREL may overlap). */
function slotRelocations(img: ModuleImage): ElfRelocation[] {
  const hit = slotRelocationCache.get(img);
  if (hit !== undefined) return hit;
  const out = computeSlotRelocations(img);
  slotRelocationCache.set(img, out);
  return out;
}

function computeSlotRelocations(img: ModuleImage): ElfRelocation[] {
  const relocs = img.elf.dynamicRelocations;
  const bySlot = new Map<bigint, ElfRelocation>();
  const inRelro = (v: bigint) => img.relro.some((r) => v >= r.start && v < r.end);
  for (const r of [...relocs.rela, ...relocs.rel, ...relocs.plt]) {
    if (r.type === R_X86_64_GLOB_DAT || r.type === R_X86_64_JUMP_SLOT || r.type === R_X86_64_IRELATIVE) bySlot.set(r.offset, r);
    // R_X86_64_64 also lands in writable data, which programs may change: only RELRO ones are protected.
    else if (r.type === R_X86_64_64 && r.symbol !== undefined && inRelro(r.offset)) bySlot.set(r.offset, r);
  }
  return [...bySlot.values()];
}

/**
 * Position-independent name of a code address: "BUILDID+0xOFF" inside a module's executable
 * mapping ("vdso+0xOFF" in the vDSO), so choices compare across processes with different layouts.
 */
function locationOf(ctx: ProcessContext, v: bigint): string | undefined {
  const mod = ctx.moduleAt(v);
  if (mod === undefined || !inExec(mod, v)) return undefined;
  const id = mod.kind === 'vdso' ? 'vdso' : (mod.buildId ?? `${mod.dev}:${mod.inode}`);
  return `${id}+${(v - mod.loadBias).toString(16)}`;
}

/**
 * Whether `actual` is an acceptable IFUNC result for the resolver at `resolverVaddr` of `def`:
 * this process' own choice for the same library build when known, else any code of the defining
 * module or of the vDSO (glibc's time/gettimeofday resolvers return vDSO functions).
 */
function ifuncOk(ctx: ProcessContext, choices: Map<string, string>, def: ScopeModule, resolverVaddr: bigint, actual: bigint): boolean {
  const where = locationOf(ctx, actual);
  if (where === undefined) return false;
  const chosen = choices.get(ifuncKey(def, resolverVaddr));
  if (chosen !== undefined) return chosen === where;
  const mod = ctx.moduleAt(actual);
  return mod === def.mod || mod?.kind === 'vdso';
}

function inExec(mod: Module, v: bigint): boolean {
  return mod.mappings.some((m) => m.protection.execute && v >= m.start && v < m.end);
}

/** A cached binding decision: indexes into the scope's modules, so it survives a new context. */
interface CachedCandidate {
  index: number;
  sym: ElfSymbol;
  value?: bigint;
}

/**
 * Allowed definitions of every slot of `sm`, cached across checks for as long as the process has
 * the same modules at the same places (the scope signature): symbol lookup is the costly part.
 */
function bindingPlan(ctx: ProcessContext, scope: Scope, sm: ScopeModule, relocs: readonly ElfRelocation[]): (Candidate[] | undefined)[] {
  const caches = ctx.caches as ProcessContext['caches'] & { bindingPlans?: Map<string, (CachedCandidate[] | undefined)[]> };
  caches.bindingPlans ??= new Map();
  const sig = ctx.memo('scope-signature', () => scope.modules.map((m) => `${m.img.key}@${m.mod.loadBias.toString(16)}:${m.startup ? 1 : 0}${m.preload ?? ''}`).join(','));
  const index = scope.modules.indexOf(sm);
  const key = `${sig}|${index}`;
  let plan = caches.bindingPlans.get(key);
  if (plan === undefined) {
    plan = relocs.map((r) => {
      if (r.type === R_X86_64_IRELATIVE || r.symbol === undefined) return undefined;
      const addend = r.type === R_X86_64_64 ? r.addend : 0n;
      return allowedDefinitions(scope, sm, r.symbol, addend, r.type).map((c) => {
        const cc: CachedCandidate = { index: scope.modules.indexOf(c.sm), sym: c.sym };
        if (c.value !== undefined) cc.value = c.value;
        return cc;
      });
    });
    if (caches.bindingPlans.size > 4096) caches.bindingPlans.clear();
    caches.bindingPlans.set(key, plan);
  }
  return plan.map((p) =>
    p?.map((c) => {
      const out: Candidate = { sm: scope.modules[c.index]!, sym: c.sym };
      if (c.value !== undefined) out.value = c.value;
      return out;
    }),
  );
}

/** Checks every import slot of every module in the main namespace. */
export function checkImports(ctx: ProcessContext): Finding[] {
  const { entries, problem } = readLinkMap(ctx);
  if (entries.length === 0) return problem ? [makeFinding({ pid: ctx.pid, code: 3, kind: 'unverifiable', severity: 'low', detail: problem })] : [];
  const scope = buildScope(ctx);
  const choices = ownIfuncChoices(ctx.options);
  const out: Finding[] = [...checkPreloadScope(ctx, scope), ...checkAudit(ctx)];
  for (const sm of scope.modules) {
    if (sm.mod.kind === 'vdso') continue;
    const bias = sm.mod.loadBias;
    const dyn = sm.img.elf.dynamic;
    const bindNow = dyn?.bindNow === true;
    const relocs = slotRelocations(sm.img);
    const values = readSlots(ctx, bias, relocs);
    const plan = bindingPlan(ctx, scope, sm, relocs);
    for (let ri = 0; ri < relocs.length; ri++) {
      const r = relocs[ri]!;
      const actual = values.get(r.offset);
      if (actual === undefined) continue;
      const slot = bias + r.offset;
      const finding = (detail: string, expected: bigint | null, severity: 'high' | 'medium' | 'info' = 'high', kind: 'got-hook' | 'ld-preload' | 'preload-file' = 'got-hook'): Finding => {
        const f = makeFinding({
          pid: ctx.pid, code: 3, kind, severity, module: sm.mod.path, offset: r.offset, address: slot,
          symbol: r.symbol?.name ?? null, expected: expected === null ? null : le64(expected), actual: le64(actual), detail,
        });
        f.destination = ctx.describeAddress(actual);
        return f;
      };
      if (r.type === R_X86_64_IRELATIVE) {
        // 0: a slot the loader left unapplied (seen in glibc's own .data.rel.ro); not a redirection.
        if (actual !== 0n && !ifuncOk(ctx, choices, sm, r.addend, actual)) {
          const chosen = choices.get(ifuncKey(sm, r.addend));
          out.push(finding(`IRELATIVE slot does not hold the implementation the resolver at 0x${r.addend.toString(16)} chooses${chosen ? ` (${chosen})` : ''}`, null));
        }
        continue;
      }
      const ref = r.symbol!;
      // Lazy binding: a JUMP_SLOT not yet called still holds the file's value (its PLT stub + 6).
      if (r.type === R_X86_64_JUMP_SLOT && !bindNow) {
        const off = sm.img.elf.vaddrToOffset(r.offset);
        if (off !== undefined && actual === BigInt.asUintN(64, u64(sm.img.fileBytes(off, 8), 0) + bias)) continue;
      }
      const allowed = plan[ri] ?? [];
      let match: Candidate | undefined;
      for (const c of allowed) {
        if (c.value !== undefined ? actual === c.value : ifuncOk(ctx, choices, c.sm, c.sym.value, actual)) {
          match = c;
          break;
        }
      }
      if (match === undefined && allowed.length === 0 && (ref.bind === STB_WEAK || ref.shndx !== SHN_UNDEF) && actual === 0n) continue; // unresolved weak
      if (match === undefined) {
        const exp = allowed[0];
        const expDesc = exp === undefined ? 'no loaded module defines it' : `the dynamic linker binds it to ${exp.sm.mod.path}`;
        out.push(finding(`import slot of ${ref.name}${ref.version ? `@${ref.version.name}` : ''} points to ${ctx.describeAddress(actual)}, but ${expDesc}`, exp?.value ?? null));
        continue;
      }
      if (match.sm.preload === 'env') {
        out.push(finding(`${ref.name} interposed by LD_PRELOAD library ${match.sm.mod.path}`, match.value ?? null, 'info', 'ld-preload'));
      } else if (match.sm.preload === 'file') {
        out.push(finding(`${ref.name} interposed by ${match.sm.mod.path} from /etc/ld.so.preload`, match.value ?? null, 'medium', 'preload-file'));
      }
    }
    // Reserved words of .got.plt for lazy binding: GOT[1] = own link_map, GOT[2] = loader's resolver.
    const pltgot = dyn?.pltgot;
    if (!bindNow && pltgot !== undefined && dyn?.jmprel !== undefined) {
      let got: Uint8Array;
      try {
        got = ctx.proc.readMemory(bias + pltgot, 24);
      } catch {
        continue;
      }
      ctx.bytesVerified += 24;
      const g1 = u64(got, 8);
      const g2 = u64(got, 16);
      const loader = ctx.modules.find((m) => m.kind === 'loader');
      if (g1 !== 0n && g1 !== sm.entry.self) {
        out.push(makeFinding({ pid: ctx.pid, code: 3, kind: 'got-hook', severity: 'high', module: sm.mod.path, offset: pltgot + 8n, address: bias + pltgot + 8n, symbol: 'GOT[1]', expected: le64(sm.entry.self), actual: le64(g1), detail: 'GOT[1] does not point to the module\'s own link_map' }));
      }
      if (g2 !== 0n && (loader === undefined || !inExec(loader, g2))) {
        const f = makeFinding({ pid: ctx.pid, code: 3, kind: 'got-hook', severity: 'high', module: sm.mod.path, offset: pltgot + 16n, address: bias + pltgot + 16n, symbol: 'GOT[2]', actual: le64(g2), detail: 'GOT[2] (lazy binding resolver) does not point into the dynamic loader' });
        f.destination = ctx.describeAddress(g2);
        out.push(f);
      }
    }
  }
  return out;
}

/**
 * Run-time address of the object a copy relocation of `mod` copies from (the first definition in
 * the scope other than `mod` itself), or undefined when it cannot be told.
 */
export function copySource(ctx: ProcessContext, mod: Module, ref: ElfSymbol): bigint | undefined {
  const scope = buildScope(ctx);
  const from = scope.modules.find((m) => m.mod === mod);
  if (from === undefined) return undefined;
  return allowedDefinitions(scope, from, ref, 0n, R_X86_64_COPY)[0]?.value;
}

/**
 * Values a symbol relocation of `mod` may hold (definitions the dynamic linker may bind it to, plus
 * the addend), or undefined when the module is not in the scope or a definition is an IFUNC.
 */
export function bindingValues(ctx: ProcessContext, mod: Module, ref: ElfSymbol, addend: bigint, relocType: number): bigint[] | undefined {
  const scope = buildScope(ctx);
  const from = scope.modules.find((m) => m.mod === mod);
  if (from === undefined) return undefined;
  const allowed = allowedDefinitions(scope, from, ref, addend, relocType);
  if (allowed.some((c) => c.value === undefined)) return undefined;
  if (allowed.length === 0 && ref.bind === STB_WEAK) return [0n];
  return allowed.map((c) => c.value!);
}

const interposedCache = new WeakMap<ModuleImage, WeakMap<ModuleImage, string[]>>();

/** Names `pre` defines that `lib` exports too (functions and objects): what `pre` interposes on `lib`. */
function interposedSymbols(pre: ModuleImage, lib: ModuleImage): string[] {
  let m = interposedCache.get(pre);
  if (m === undefined) interposedCache.set(pre, (m = new WeakMap()));
  const hit = m.get(lib);
  if (hit !== undefined) return hit;
  const names = new Set<string>();
  for (const s of pre.elf.dynamicSymbols) {
    if (s.shndx === SHN_UNDEF || s.name === '') continue;
    if (pre.exportsNamed(s.name).length === 0) continue;
    if (lib.exportsNamed(s.name).some((d) => d.shndx !== SHN_UNDEF)) names.add(s.name);
  }
  const out = [...names].sort();
  m.set(lib, out);
  return out;
}

/** sonames of the libraries whose interposition is at least medium: the C library and libpthread. */
const CORE_LIBRARIES: readonly string[] = ['libc.so.6', 'libpthread.so.0'];

function listNames(names: readonly string[], max = 8): string {
  return names.length <= max ? names.join(', ') : `${names.slice(0, max).join(', ')}, … (${names.length} in all)`;
}

/**
 * Interposition judged on the scope, whether or not any slot is bound yet (lazy binding): every
 * preloaded library ahead of the C library in the lookup order wins the lookup of each libc /
 * libpthread symbol it defines, for every module of the process.
 * - LD_PRELOAD (environment) interposing libc/libpthread symbols: medium `ld-preload`
 *   (other LD_PRELOAD libraries only give the per-slot info findings);
 * - /etc/ld.so.preload: medium `preload-file`;
 * - a module in the preload position that neither names: medium `ld-preload`, high when it
 *   interposes libc/libpthread symbols.
 */
function checkPreloadScope(ctx: ProcessContext, scope: Scope): Finding[] {
  const out: Finding[] = [];
  const core = scope.modules.filter((m) => m.startup && CORE_LIBRARIES.includes(m.img.elf.dynamic?.soname ?? ''));
  for (const sm of scope.modules) {
    if (sm.preload === undefined) continue;
    const interposed: string[] = [];
    for (const c of core) for (const n of interposedSymbols(sm.img, c.img)) if (!interposed.includes(n)) interposed.push(n);
    interposed.sort();
    const what = interposed.length > 0 ? `; it wins the symbol lookup of ${interposed.length} C library symbol(s) for every module, bound yet or not: ${listNames(interposed)}` : '';
    const base = { pid: ctx.pid, code: 3 as const, module: sm.mod.path, offset: null, address: sm.mod.base, symbol: interposed[0] ?? null };
    if (sm.preload === 'env') {
      if (interposed.length === 0) continue;
      out.push(makeFinding({ ...base, kind: 'ld-preload', severity: 'medium', detail: `LD_PRELOAD library ${sm.mod.path} interposes the C library${what}` }));
    } else if (sm.preload === 'file') {
      out.push(makeFinding({ ...base, kind: 'preload-file', severity: 'medium', detail: `${sm.mod.path} is preloaded into every process by /etc/ld.so.preload${what}` }));
    } else {
      out.push(makeFinding({
        ...base, kind: 'ld-preload', severity: interposed.length > 0 ? 'high' : 'medium',
        detail: `${sm.mod.path} is in the preload position of the module list (ahead of the executable's dependencies, in none of their DT_NEEDED) but neither LD_PRELOAD in the environment nor /etc/ld.so.preload names it: the environment was rewritten or link_map was reordered${what}`,
      }));
    }
  }
  return out;
}

/**
 * rtld-audit libraries (LD_AUDIT): they see every symbol binding and may redirect it
 * (la_symbind64) without touching an import slot. Found by the environment's LD_AUDIT and by the
 * loaded modules themselves (an audit library must export `la_version`; it is loaded in its own
 * namespace). Medium `ld-audit`.
 */
function checkAudit(ctx: ProcessContext): Finding[] {
  const out: Finding[] = [];
  const names = splitList(ctx.environ.get('LD_AUDIT') ?? '');
  const reported = new Set<Module>();
  for (const mod of ctx.modules) {
    if (mod.kind === 'vdso') continue;
    const img = ctx.image(mod);
    if (img === null) continue;
    const byEnv = names.find((n) => libraryNameMatches(ctx, n, mod, img));
    const exportsLaVersion = img.exportsNamed('la_version').some((s) => s.shndx !== SHN_UNDEF);
    if (byEnv === undefined && !exportsLaVersion) continue;
    reported.add(mod);
    const why = byEnv !== undefined ? `named by LD_AUDIT=${byEnv} in the environment` : 'exports la_version (the rtld-audit entry point) but LD_AUDIT in the environment does not name it';
    out.push(makeFinding({
      pid: ctx.pid, code: 3, kind: 'ld-audit', severity: 'medium', module: mod.path, address: mod.base,
      symbol: exportsLaVersion ? 'la_version' : null,
      detail: `rtld-audit library ${mod.path} (${why}): the dynamic linker calls it for every symbol binding, and it can redirect bindings without changing any import slot`,
    }));
  }
  for (const n of names) {
    if ([...reported].some((m) => libraryNameMatches(ctx, n, m, ctx.image(m)))) continue;
    out.push(makeFinding({ pid: ctx.pid, code: 3, kind: 'ld-audit', severity: 'medium', module: n, detail: `the process was started with LD_AUDIT naming ${n}, which is not mapped (no audit library loaded, or it was unmapped)` }));
  }
  return out;
}

/**
 * Structure 6, the dynamic linker's own data: link_map names and order must agree with the files.
 * - every l_name that resolves (in the target's root) must be the file mapped at that entry
 *   (device and inode through /proc/PID/map_files): a renamed entry makes a hook look like libc;
 * - the start-up modules must appear in link_map in the order the files give (executable,
 *   preloads, DT_NEEDED breadth-first): the dynamic linker never reorders them.
 * High `forged-link-map` findings. Bindings are judged from the files either way (structure 3).
 */
export function checkLinkMapForgery(ctx: ProcessContext): Finding[] {
  const { entries, state } = readLinkMap(ctx);
  if (entries.length === 0 || state !== 0) return [];
  const scope = buildScope(ctx);
  const out: Finding[] = [];
  for (const { mod, entry } of modulesInLoadOrder(ctx)) {
    if (linkMapNameMatches(ctx, mod, entry) !== false) continue;
    out.push(makeFinding({
      pid: ctx.pid, code: 6, kind: 'forged-link-map', severity: 'high', module: mod.path, address: entry.self, symbol: 'l_name',
      detail: `link_map entry at 0x${entry.self.toString(16)} (namespace ${entry.namespace}, position ${entry.index}) names ${entry.name}, but the module mapped there is ${mod.path} (another file): the dynamic linker's module list was edited`,
    }));
  }
  const want = scope.modules.filter((m) => m.startup && m.mod.kind !== 'vdso').map((m) => m.mod);
  const have = scope.linkMapOrder.map((x) => x.mod).filter((m) => want.includes(m));
  const i = have.findIndex((m, k) => m !== want[k]);
  if (i >= 0) {
    const e = scope.linkMapOrder.find((x) => x.mod === have[i])!.entry;
    out.push(makeFinding({
      pid: ctx.pid, code: 6, kind: 'forged-link-map', severity: 'high', module: have[i]!.path, address: e.self, symbol: 'l_next',
      detail: `link_map lists ${have[i]!.path} at start-up position ${i}, where the executable's preloads and DT_NEEDED order put ${want[i]?.path ?? 'nothing'}: the dynamic linker's module list was reordered (symbol bindings are judged in the order the files give)`,
    }));
  }
  return out;
}
