/**
 * Structure 5 (injected executable memory), 6 (module list) and 9 (vDSO). Read-only.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { basename } from 'node:path';
import { parseElf } from '../../elf/index.js';
import { openProcess, type Mapping, type Module } from '../../process/index.js';
import { describeHook, iterateInstructions } from '../../x86/index.js';
import type { ProcessContext, VerifierCaches } from '../context.js';
import { makeFinding, type Finding, type FindingKind, type Severity } from '../finding.js';
import { coldInstallBackupOf } from '../cold-install.js';
import { ModuleImage } from '../image.js';
import { matchesAny } from '../policy.js';
import { linkMapEntryOf, readLinkMap } from './linkmap.js';
import { sanctionedState } from './sanctioned.js';

/** A JIT runtime recognised in a process (the owner of its anonymous executable regions). */
export type JitRuntime = 'node' | 'jvm' | 'luajit' | 'libffi';

/** Recognises the JIT runtimes loaded in a process by their modules. */
export function recognisedRuntimes(modules: readonly Module[], exe: string): JitRuntime[] {
  const out = new Set<JitRuntime>();
  const exeName = basename(exe);
  if (exeName === 'node' || exeName === 'nodejs') out.add('node');
  if (exeName === 'luajit' || exeName.startsWith('luajit-')) out.add('luajit');
  for (const m of modules) {
    if (/^libnode\.so/.test(m.name)) out.add('node');
    if (m.name === 'libjvm.so') out.add('jvm');
    if (/^libluajit-5\.1\.so/.test(m.name)) out.add('luajit');
    if (/^libffi\.so/.test(m.name)) out.add('libffi');
  }
  return [...out];
}

/** Whether the policy lets this process hold JIT code owned by a recognised runtime. */
function jitAllowed(ctx: ProcessContext): JitRuntime[] {
  const jit = ctx.options.policy.jit;
  if (jit === 'none') return [];
  if (jit !== 'recognised' && !matchesAny(jit, ctx.identity)) return [];
  return recognisedRuntimes(ctx.modules, ctx.identity.exe);
}

function head(ctx: ProcessContext, mp: Mapping, n = 32): Uint8Array {
  try {
    return ctx.proc.readMemoryPartial(mp.start, Math.min(n, Number(mp.end - mp.start)));
  } catch {
    return new Uint8Array(0);
  }
}

function isElf(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

function texts(bytes: Uint8Array, address: bigint, max = 4): string[] {
  const out: string[] = [];
  for (const i of iterateInstructions(bytes, address, { text: true, maxInstructions: max })) {
    out.push(i.invalid ? '(invalid)' : i.text);
    if (i.invalid || i.flow === 'return' || i.mnemonic === 'jmp') break; // what follows need not be code
  }
  return out;
}

/** The first bytes of the mapped file (through map_files, else the path), or null. */
function fileHead(mp: Mapping): Uint8Array | null {
  for (const p of [mp.mapFilesPath, mp.path]) {
    if (p === undefined) continue;
    let fd: number;
    try {
      fd = openSync(p, 'r');
    } catch {
      continue;
    }
    try {
      const b = new Uint8Array(64);
      const n = readSync(fd, b, 0, 64, 0);
      return b.subarray(0, n);
    } catch {
      return null;
    } finally {
      closeSync(fd);
    }
  }
  return null;
}

/**
 * An executable mapping of a file that is not part of any ELF module: a non-ELF file (raw code
 * loaded from disk), or an ELF file mapped without its first page (no ELF header at file offset
 * 0 is mapped, so the dynamic linker never loaded it and the verifier has no module to compare).
 */
function notModuleCode(ctx: ProcessContext, mp: Mapping): Finding {
  const head = fileHead(mp);
  const elf = head !== null && isElf(head);
  const bytes = ctx.proc.readMemoryPartial(mp.start, Math.min(16, Number(mp.end - mp.start)));
  const range = `0x${mp.start.toString(16)}-0x${mp.end.toString(16)} (${mp.perms}, file offset 0x${mp.fileOffset.toString(16)})`;
  const f = makeFinding({
    pid: ctx.pid, code: 5, kind: elf ? 'headerless-elf' : 'non-elf-code', severity: 'high', module: mp.path, offset: mp.fileOffset, address: mp.start,
    actual: bytes.length > 0 ? bytes : null,
    detail: elf
      ? `executable mapping ${range} of ELF file ${mp.path} without its ELF header (file offset 0 is not mapped): code mapped by hand, not loaded by the dynamic linker, and not verifiable as a module`
      : head === null
        ? `executable mapping ${range} of ${mp.path}, which cannot be read to tell what it is: code that belongs to no module`
        : `executable mapping ${range} of ${mp.path}, which is not an ELF file: raw code loaded from a file, belonging to no module`,
  });
  if (bytes.length > 0) f.instructions = { expected: [], actual: texts(bytes, mp.start) };
  return f;
}

/** Largest anonymous executable region accepted as libffi closure memory. */
const LIBFFI_MAX_REGION = 1n << 20n;

/** Structure 5: executable memory that no module file accounts for. */
export function checkInjected(ctx: ProcessContext): Finding[] {
  const out: Finding[] = [];
  let runtimes: JitRuntime[] | undefined;
  let arenas: Set<bigint> | undefined;
  for (const mp of ctx.mappings) {
    if (!mp.protection.execute) continue;
    if (mp.path === '[vdso]' || mp.path === '[vsyscall]') continue;
    const memfd = mp.isFile && mp.path.startsWith('/memfd:');
    const wx = mp.protection.write;
    if (mp.isFile && !memfd && !mp.deleted && !wx) {
      // Module code: structures 0 and 6. A file mapping that belongs to no ELF module is code the
      // verifier cannot compare with anything.
      if (ctx.moduleAt(mp.start) === undefined) out.push(notModuleCode(ctx, mp));
      continue;
    }
    runtimes ??= jitAllowed(ctx);
    let kind: FindingKind;
    let severity: Severity = 'high';
    let detail: string;
    if (memfd) {
      if (runtimes.includes('libffi') && /^\/memfd:libffi/.test(mp.path)) continue; // libffi closure trampolines
      kind = 'memfd-code';
      detail = `executable mapping of memfd ${mp.path}${wx ? ' (writable and executable)' : ''}: code loaded without a file on disk`;
    } else if (mp.isFile && mp.deleted) {
      // The original a cold patch replaced: structure 0 still compares its code with that inode.
      if (!wx && coldInstallBackupOf(mp) !== undefined) continue;
      const mod = ctx.moduleAt(mp.start);
      const listed = mod !== undefined && linkMapEntryOf(ctx, mod, readLinkMap(ctx).entries) !== undefined;
      kind = 'deleted-code';
      severity = listed ? 'low' : 'high';
      detail = listed
        ? `executable mapping of deleted file ${mp.path}: the library was replaced on disk after it was loaded (package upgrade? restart the process)`
        : `executable mapping of deleted file ${mp.path}, not loaded by the dynamic linker`;
    } else if (mp.isFile) {
      kind = 'wx-memory';
      detail = `file mapping ${mp.path} is writable and executable`;
    } else {
      arenas ??= sanctionedState(ctx).arenas;
      if (arenas.has(mp.start)) continue; // hotpatch's own arena, verified by structure 10
      // JIT code of a recognised runtime the policy allows. libffi alone only makes closure pages
      // (a few KiB each, from a small allocator), so large regions there are not its own.
      const ffiOnly = runtimes.length === 1 && runtimes[0] === 'libffi';
      if (runtimes.length > 0 && !(ffiOnly && mp.end - mp.start > LIBFFI_MAX_REGION)) continue;
      kind = wx ? 'wx-memory' : 'anonymous-code';
      detail = `${wx ? 'writable and executable' : 'executable'} anonymous memory (${mp.path || 'no name'}, ${Number(mp.end - mp.start)} bytes)`;
    }
    const bytes = head(ctx, mp);
    if (isElf(bytes)) detail += '; it starts with an ELF header';
    const f = makeFinding({
      pid: ctx.pid, code: 5, kind, severity, module: mp.path === '' ? null : mp.path, offset: 0n, address: mp.start,
      actual: bytes.length > 0 ? bytes.slice(0, 16) : null, detail: `${detail} at 0x${mp.start.toString(16)}-0x${mp.end.toString(16)} (${mp.perms})`,
    });
    if (bytes.length > 0 && !isElf(bytes)) f.instructions = { expected: [], actual: texts(bytes, mp.start) };
    out.push(f);
  }
  return out;
}

/** Structure 6: every mapped ELF image with code must be known to the dynamic linker (link_map). */
export function checkModuleList(ctx: ProcessContext): Finding[] {
  const lm = readLinkMap(ctx);
  if (lm.problem !== undefined) return [makeFinding({ pid: ctx.pid, code: 6, kind: 'unverifiable', severity: 'medium', detail: `${lm.problem} (a damaged module list is itself suspicious)` })];
  // A dlopen/dlclose in progress (RT_ADD / RT_DELETE): the list is being changed, check later.
  if (lm.state !== 0) return [];
  const out: Finding[] = [];
  const matched = new Set<bigint>();
  for (const mod of ctx.modules) {
    if (mod.kind === 'vdso' || mod.kind === 'loader') continue;
    if (!mod.mappings.some((m) => m.protection.execute)) continue; // an ELF file mapped as data
    const e = linkMapEntryOf(ctx, mod, lm.entries);
    if (e !== undefined) {
      matched.add(e.self);
      continue;
    }
    if (lm.rDebug === null && mod.kind === 'executable') continue; // static executable: no link_map
    const exec = mod.mappings.filter((m) => m.protection.execute);
    out.push(makeFinding({
      pid: ctx.pid, code: 6, kind: 'hidden-module', severity: 'high', module: mod.path, offset: 0n, address: mod.base,
      detail: `ELF image ${mod.path}${mod.deleted ? ' (deleted)' : ''} is mapped with code at ${exec.map((m) => `0x${m.start.toString(16)}`).join(', ')} but the dynamic linker's link_map does not list it (loaded by hand, not by dlopen)`,
    }));
  }
  for (const e of lm.entries) {
    if (matched.has(e.self) || e.name === '' || e.namespace !== 0) continue;
    const mod = ctx.modules.find((m) => linkMapEntryOf(ctx, m, [e]) !== undefined);
    if (mod !== undefined) continue; // vDSO, loader
    out.push(makeFinding({
      pid: ctx.pid, code: 6, kind: 'unlisted-module', severity: 'low', module: e.name, address: e.self,
      detail: `link_map lists ${e.name} (l_addr 0x${e.addr.toString(16)}) but no mapped ELF image matches it`,
    }));
  }
  return out;
}

/** The verifier's own vDSO (the kernel's image as every process gets it), read once. */
function ownVdso(caches: VerifierCaches): Uint8Array | null {
  if (caches.ownVdso !== undefined) return caches.ownVdso;
  caches.ownVdso = null;
  try {
    const maps = readFileSync('/proc/self/maps', 'utf8');
    const m = /^([0-9a-f]+)-([0-9a-f]+) [^\n]*\[vdso\]$/m.exec(maps);
    if (m) {
      const me = openProcess(process.pid);
      try {
        const start = BigInt(`0x${m[1]}`);
        caches.ownVdso = new Uint8Array(me.readMemory(start, Number(BigInt(`0x${m[2]}`) - start)));
      } finally {
        me.close();
      }
    }
  } catch {
    caches.ownVdso = null;
  }
  return caches.ownVdso;
}

/** Structure 9: the vDSO must equal the kernel's image (this process' vDSO; vvar is not compared). */
export function checkVdso(ctx: ProcessContext): Finding[] {
  const vd = ctx.mappings.find((m) => m.path === '[vdso]');
  if (vd === undefined) return [];
  const ref = ownVdso(ctx.caches);
  if (ref === null) return [makeFinding({ pid: ctx.pid, code: 9, kind: 'unverifiable', severity: 'low', detail: 'cannot read the verifier\'s own vDSO as reference' })];
  const len = Number(vd.end - vd.start);
  let actual: Uint8Array;
  try {
    actual = ctx.proc.readMemory(vd.start, len);
  } catch {
    return [];
  }
  ctx.bytesVerified += len;
  if (len !== ref.length) {
    return [makeFinding({ pid: ctx.pid, code: 9, kind: 'vdso-modified', severity: 'high', module: '[vdso]', address: vd.start, detail: `vDSO is ${len} bytes, the kernel's is ${ref.length}` })];
  }
  if (Buffer.compare(actual, ref) === 0) return [];
  let img: ModuleImage | null = null;
  try {
    img = new ModuleImage(parseElf(ref, { name: '[vdso]' }), 'vdso');
  } catch {
    img = null;
  }
  const out: Finding[] = [];
  for (let i = 0; i < len && out.length < 16; i++) {
    if (actual[i] === ref[i]) continue;
    let j = i + 1;
    while (j < len && j - i < 4096 && (actual[j] !== ref[j] || (j + 1 < len && actual.subarray(j, Math.min(len, j + 16)).some((b, k) => b !== ref[j + k])))) j++;
    // vDSO text is linked at 0: offsets are vaddrs.
    const off = BigInt(i);
    const addr = vd.start + off;
    const f = makeFinding({
      pid: ctx.pid, code: 9, kind: 'vdso-modified', severity: 'high', module: '[vdso]', offset: off, address: addr, symbol: img?.symbolize(off) ?? null,
      expected: ref.slice(i, j), actual: actual.slice(i, j), detail: `${j - i} byte(s) of the vDSO differ from the kernel's image`,
    });
    if (img?.isCode(off)) {
      const hook = describeHook(actual.subarray(i, Math.min(len, i + 16)), addr);
      f.instructions = { expected: texts(ref.subarray(i, Math.min(len, i + 16)), addr, 2), actual: hook.texts };
      if (hook.destination !== undefined) f.destination = ctx.describeAddress(hook.destination);
    }
    out.push(f);
    i = j;
  }
  return out;
}
