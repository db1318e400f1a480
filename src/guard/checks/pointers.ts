/**
 * Structure 3 extended to the function pointers the dynamic linker initialises in writable data
 * (issue #14): callbacks in `.data`, `.init_array`/`.fini_array` of modules without RELRO, static
 * tables of function pointers (Python's type objects, libc's own hooks), and the vtables of the
 * stdio FILE objects. What is checked and what cannot be is in docs/guard.md (structure 3).
 *
 * 1. Relocation-initialised code pointers: every R_X86_64_RELATIVE / DT_RELR word (whose
 *    link-time target lies in an executable section of the module) and every R_X86_64_64 to a
 *    function symbol, in a writable segment outside PT_GNU_RELRO (RELRO words are structure 2).
 *    Programs may re-target such a slot (another function, NULL), so only a destination outside
 *    module code is a finding: executable memory that is no module's code (anonymous, memfd,
 *    deleted file; JIT code is accepted where the policy allows JIT and a runtime is recognised)
 *    is high; so is any address outside module code in sections that hold nothing but function
 *    pointers (`.init_array`, `.fini_array`, `.preinit_array`, `__libc_atexit`). Elsewhere a
 *    pointer that now leads to data is low: it cannot run (NX) and C programs may reuse slots.
 * 2. stdio FILE objects reachable from `_IO_list_all`, `_IO_2_1_std{in,out,err}_` and
 *    `stdin`/`stdout`/`stderr` of every loaded C library: the `vtable` field must lie inside a
 *    loaded C library's `__libc_IO_vtables` section (glibc's own rule), and so must the wide
 *    vtable (`_wide_data->_wide_vtable`, which glibc does not validate).
 */
import {
  PF_W,
  PT_LOAD,
  R_X86_64_64,
  R_X86_64_RELATIVE,
  STT_FUNC,
  STT_GNU_IFUNC,
} from '../../elf/index.js';
import type { Mapping, Module } from '../../process/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';
import { RELR_WORD, type ModuleImage } from '../image.js';
import { matchesAny } from '../policy.js';
import { modulesInLoadOrder } from './linkmap.js';
import { recognisedRuntimes } from './memory.js';
import { le64, readWords, u64 } from './words.js';

/** A writable word the module's relocations initialise to a code address. */
interface CodePointerSlot {
  /** Link-time vaddr of the slot. */
  vaddr: bigint;
  /** Link-time target (RELATIVE/RELR), or undefined for a symbol relocation (bound at run time). */
  target?: bigint;
  symbol?: string;
  section: string;
  /** The section holds nothing but function pointers: any destination outside code is a hook. */
  strict: boolean;
}

/** Sections that hold only function pointers (called by the loader or libc at start / exit). */
const FUNCTION_POINTER_SECTIONS: readonly string[] = ['.init_array', '.fini_array', '.preinit_array', '__libc_atexit', '.ctors', '.dtors'];

const slotCache = new WeakMap<ModuleImage, CodePointerSlot[]>();

/** The code-pointer slots of a module file (cached with the parsed file). */
export function codePointerSlots(img: ModuleImage): CodePointerSlot[] {
  const hit = slotCache.get(img);
  if (hit !== undefined) return hit;
  const out: CodePointerSlot[] = [];
  const inRelro = (v: bigint) => img.relro.some((r) => v >= r.start && v < r.end);
  for (const seg of img.elf.programHeaders) {
    if (seg.type !== PT_LOAD || (seg.flags & PF_W) === 0) continue;
    for (const w of img.relocationWordsIn(seg.vaddr, seg.vaddr + seg.memsz)) {
      if (inRelro(w.vaddr)) continue;
      let slot: CodePointerSlot | undefined;
      const section = img.sectionAt(w.vaddr)?.name ?? '';
      const strict = FUNCTION_POINTER_SECTIONS.includes(section);
      if ((w.type === R_X86_64_RELATIVE || w.type === RELR_WORD) && img.isCode(w.addend)) {
        slot = { vaddr: w.vaddr, target: w.addend, section, strict };
      } else if (w.type === R_X86_64_64 && w.symbol !== undefined && (w.symbol.type === STT_FUNC || w.symbol.type === STT_GNU_IFUNC)) {
        slot = { vaddr: w.vaddr, symbol: w.symbol.name, section, strict };
      }
      if (slot !== undefined) out.push(slot);
    }
  }
  slotCache.set(img, out);
  return out;
}

/** Whether `v` lies in an executable mapping of a module's file (the vDSO included). */
function inModuleCode(ctx: ProcessContext, v: bigint): boolean {
  return ctx.isModuleCode(v);
}

/** Whether anonymous executable memory may be JIT code the policy allows in this process. */
function jitAllowed(ctx: ProcessContext): boolean {
  return ctx.memo('pointers:jit', () => {
    const jit = ctx.options.policy.jit;
    if (jit === 'none') return false;
    if (jit !== 'recognised' && !matchesAny(jit, ctx.identity)) return false;
    return recognisedRuntimes(ctx.modules, ctx.identity.exe).length > 0;
  });
}

/** Why destination `v` of a code pointer is outside module code, or undefined when it is acceptable. */
function hookReason(ctx: ProcessContext, v: bigint): string | undefined {
  if (v === 0n || inModuleCode(ctx, v)) return undefined;
  const mp: Mapping | undefined = ctx.mappingAt(v);
  if (mp !== undefined && mp.protection.execute) {
    if (!mp.isFile && jitAllowed(ctx)) return undefined;
    return 'executable memory that is no module\'s code';
  }
  return mp === undefined ? 'an unmapped address' : 'memory that is not code';
}

/** Checks the relocation-initialised code pointers in writable data of every listed module. */
function checkSlots(ctx: ProcessContext, mod: Module, img: ModuleImage): Finding[] {
  const slots = codePointerSlots(img);
  if (slots.length === 0) return [];
  const bias = mod.loadBias;
  const values = readWords(ctx, bias, slots.map((s) => s.vaddr));
  const out: Finding[] = [];
  for (const s of slots) {
    const v = values.get(s.vaddr);
    if (v === undefined) continue;
    if (s.target !== undefined && v === BigInt.asUintN(64, bias + s.target)) continue;
    const why = hookReason(ctx, v);
    if (why === undefined) continue;
    // Executable memory, or any non-code address in a section of nothing but function pointers,
    // is a hook. Elsewhere a data address cannot run (NX) and programs reuse such slots for data
    // (bash stores 1 in a callback field of its job table): not a finding.
    const executable = ctx.mappingAt(v)?.protection.execute === true;
    if (!executable && !s.strict) continue;
    const initial = s.target !== undefined ? `${mod.path}+0x${s.target.toString(16)}${img.symbolize(s.target) ? ` (${img.symbolize(s.target)})` : ''}` : `the address of ${s.symbol}`;
    const f = makeFinding({
      pid: ctx.pid, code: 3, kind: 'pointer-hook', severity: 'high', module: mod.path, offset: s.vaddr, address: bias + s.vaddr,
      symbol: img.symbolize(s.vaddr) ?? s.section, expected: s.target !== undefined ? le64(bias + s.target) : null, actual: le64(v),
      detail: `function pointer in ${s.section || 'writable data'} that the module's relocations initialise to ${initial} now leads to ${why}: calls through it run code outside every module`,
    });
    f.destination = ctx.describeAddress(v);
    out.push(f);
  }
  return out;
}

/** A loaded C library with its vtable section (run-time range). */
interface Libc {
  mod: Module;
  img: ModuleImage;
  start: bigint;
  end: bigint;
}

/** sizeof(FILE) on x86-64 glibc: the `vtable` of struct _IO_FILE_plus follows it. */
const FILE_SIZE = 0xd8n;
/** Offsets in struct _IO_FILE: _chain, _wide_data; in struct _IO_wide_data: _wide_vtable. */
const FILE_CHAIN = 0x68n;
const FILE_WIDE_DATA = 0xa0n;
const WIDE_VTABLE = 0xe0n;
const MAX_FILES = 4096;

/** Checks the vtables of the stdio FILE objects every loaded C library can reach. */
function checkFileVtables(ctx: ProcessContext): Finding[] {
  const libcs: Libc[] = [];
  for (const { mod } of modulesInLoadOrder(ctx)) {
    const img = ctx.image(mod);
    const sec = img?.elf.findSection('__libc_IO_vtables');
    if (img === null || img === undefined || sec === undefined || sec.addr === 0n) continue;
    libcs.push({ mod, img, start: mod.loadBias + sec.addr, end: mod.loadBias + sec.addr + sec.size });
  }
  if (libcs.length === 0) return [];
  const inVtables = (v: bigint) => libcs.some((l) => v >= l.start && v < l.end);
  const read = (a: bigint): bigint | undefined => {
    try {
      const b = ctx.proc.readMemory(a, 8);
      ctx.bytesVerified += 8;
      return u64(b, 0);
    } catch {
      return undefined;
    }
  };
  const out: Finding[] = [];
  const seen = new Set<bigint>();
  for (const l of libcs) {
    const starts: bigint[] = [];
    for (const name of ['_IO_2_1_stdin_', '_IO_2_1_stdout_', '_IO_2_1_stderr_']) {
      const s = l.img.elf.findSymbol(name, { table: 'dynsym' });
      if (s !== undefined) starts.push(l.mod.loadBias + s.value);
    }
    for (const name of ['_IO_list_all', 'stdin', 'stdout', 'stderr']) {
      const s = l.img.elf.findSymbol(name, { table: 'dynsym' });
      const p = s !== undefined ? read(l.mod.loadBias + s.value) : undefined;
      if (p !== undefined && p !== 0n) starts.push(p);
    }
    for (const first of starts) {
      let fp: bigint | undefined = first;
      while (fp !== undefined && fp !== 0n && !seen.has(fp) && seen.size < MAX_FILES) {
        seen.add(fp);
        const vt = read(fp + FILE_SIZE);
        if (vt === undefined) break;
        const owner = ctx.moduleAt(fp);
        const where = owner !== undefined ? `${owner.path}+0x${(fp - owner.loadBias).toString(16)}` : `0x${fp.toString(16)}`;
        const report = (field: string, slot: bigint, value: bigint, detail: string) => {
          const f = makeFinding({
            pid: ctx.pid, code: 3, kind: 'file-vtable', severity: 'high', module: owner?.path ?? l.mod.path,
            offset: owner !== undefined ? slot - owner.loadBias : null, address: slot, symbol: field, actual: le64(value), detail,
          });
          f.destination = ctx.describeAddress(value);
          out.push(f);
        };
        if (!inVtables(vt)) {
          report('FILE.vtable', fp + FILE_SIZE, vt, `the vtable of the stdio FILE at ${where} lies outside the C library's __libc_IO_vtables section: every read, write, flush and fclose on it calls the functions the hook supplies`);
        }
        const wide = read(fp + FILE_WIDE_DATA);
        if (wide !== undefined && wide !== 0n && wide !== 0xffffffffffffffffn) {
          const wvt = read(wide + WIDE_VTABLE);
          if (wvt !== undefined && wvt !== 0n && !inVtables(wvt)) {
            report('FILE._wide_data._wide_vtable', wide + WIDE_VTABLE, wvt, `the wide-character vtable of the stdio FILE at ${where} lies outside the C library's __libc_IO_vtables section (glibc does not validate it): wide stdio calls on it run the functions the hook supplies`);
          }
        }
        fp = read(fp + FILE_CHAIN);
      }
    }
  }
  return out;
}

/** Function pointers in writable data (structure 3): relocation-initialised code pointers and stdio vtables. */
export function checkCodePointers(ctx: ProcessContext): Finding[] {
  const out: Finding[] = [];
  for (const { mod } of modulesInLoadOrder(ctx)) {
    if (mod.kind === 'vdso') continue;
    const img = ctx.image(mod);
    if (img !== null) out.push(...checkSlots(ctx, mod, img));
  }
  out.push(...checkFileVtables(ctx));
  return out;
}
