/**
 * Structures 0 (module code), 1 (read-only data), 2 (RELRO) and 4 (export tables): every
 * non-writable mapping of a module's file must hold the file's bytes at the mapping's offset —
 * with, for RELRO and text-relocated mappings, the relocations applied the way ld.so applies them.
 * Also the identity of the mapped file itself (package checksum, first-seen identity).
 *
 * Cheap signal first: a file-backed mapping without anonymous (copy-on-write) pages shows the page
 * cache of its file, so after one full comparison it may be skipped for `cleanCacheMs`.
 */
import {
  DT_DEBUG,
  DT_GNU_HASH,
  DT_HASH,
  DT_JMPREL,
  DT_PLTGOT,
  DT_REL,
  DT_RELA,
  DT_RELR,
  DT_STRTAB,
  DT_SYMTAB,
  DT_VERSYM,
  R_X86_64_RELATIVE,
  R_X86_64_TLSDESC,
  R_X86_64_64,
  R_X86_64_COPY,
  R_X86_64_NONE,
} from '../../elf/index.js';
import { statSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import { PROCESS_NOT_FOUND, PROCESS_ZOMBIE, type Mapping, type Module } from '../../process/index.js';
import { describeHook, iterateInstructions } from '../../x86/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding, type FindingKind, type Severity, type StructureCode } from '../finding.js';
import { statKey } from '../identity.js';
import { RELR_WORD, type ModuleImage, type VaddrRange } from '../image.js';
import { bindingValues, copySource } from './imports.js';
import { sanctionedState } from './sanctioned.js';

const PAGE = 4096;
/** Differences closer than this are reported as one finding. */
const MERGE_GAP = 16;
/** At most this many findings per mapping (a wholesale overwrite is one problem, not thousands). */
const MAX_FINDINGS_PER_MAPPING = 32;
/** Longest byte run in one finding; longer runs are split. */
const MAX_RUN = 4096;
const READ_CHUNK = 4 << 20;
/** Longest single mapping compared (larger ones are an `unverifiable` finding about that mapping alone). */
const MAX_MAPPING_COMPARE = 1 << 30;

/** Whether the mapping is still in /proc/PID/maps (re-read, not the context's snapshot). */
function stillMapped(ctx: ProcessContext, mp: Mapping): boolean {
  try {
    return ctx.proc.enumerateMappings().some((m) => m.start === mp.start && m.end === mp.end && m.inode === mp.inode);
  } catch {
    return false;
  }
}

/** Tags of .dynamic entries whose d_ptr glibc rewrites to a run-time address (get-dynamic-info.h). */
const DYN_ADJUSTED_TAGS = new Set<number>([DT_HASH, DT_PLTGOT, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_REL, DT_JMPREL, DT_VERSYM, DT_GNU_HASH, DT_RELR]);


function overlaps(a: VaddrRange, start: bigint, end: bigint): boolean {
  return a.start < end && start < a.end;
}

function inRanges(ranges: readonly VaddrRange[], v: bigint): boolean {
  return ranges.some((r) => v >= r.start && v < r.end);
}

/**
 * An expected 8-byte word, a masked word (checked elsewhere, or written at start-up), or the
 * bytes a copy relocation copied from a library's object.
 */
interface WordOverride {
  vaddr: bigint;
  value: bigint | 'mask' | Uint8Array;
}

/**
 * The words of a mapping that the dynamic loader changes: RELATIVE and RELR get their relocated
 * value; symbol bindings (GLOB_DAT, JUMP_SLOT, 64, IRELATIVE) and TLS values are masked here and
 * verified by the import-table check (structure 3). `actual` (the mapping's memory, starting at
 * vaddr `start`) supplies the loader-rewritten .dynamic entries.
 */
function relocationOverrides(ctx: ProcessContext, mod: Module, img: ModuleImage, start: bigint, end: bigint, actual: Uint8Array, relro: boolean): WordOverride[] {
  const out: WordOverride[] = [];
  const bias = mod.loadBias;
  for (const r of img.relocationWordsIn(start, end)) {
    // Text relocations against symbols (DT_TEXTREL): the import check does not see them, so the
    // value is checked here against the definitions the dynamic linker may bind to.
    if (!relro && r.type === R_X86_64_64 && r.symbol !== undefined) {
      const off = Number(r.vaddr - start);
      const values = off >= 0 && off + 8 <= actual.length ? bindingValues(ctx, mod, r.symbol, r.addend, r.type) : undefined;
      if (values === undefined || values.length === 0) {
        out.push({ vaddr: r.vaddr, value: 'mask' });
        continue;
      }
      const now = new DataView(actual.buffer, actual.byteOffset + off, 8).getBigUint64(0, true);
      out.push({ vaddr: r.vaddr, value: values.includes(now) ? now : values[0]! });
      continue;
    }
    switch (r.type) {
      case R_X86_64_RELATIVE:
      case RELR_WORD:
        out.push({ vaddr: r.vaddr, value: BigInt.asUintN(64, bias + r.addend) });
        break;
      case R_X86_64_NONE:
        break;
      case R_X86_64_COPY: {
        // The loader copied the library's (relocated) object here: expect its current bytes.
        const sym = r.symbol;
        if (sym === undefined || sym.size === 0n || sym.size > 1n << 20n) break;
        const src = copySource(ctx, mod, sym);
        let bytes: Uint8Array | undefined;
        try {
          bytes = src === undefined ? undefined : ctx.proc.readMemory(src, Number(sym.size));
        } catch {
          bytes = undefined;
        }
        if (bytes !== undefined) out.push({ vaddr: r.vaddr, value: bytes });
        else for (let v = r.vaddr; v < r.vaddr + sym.size; v += 8n) out.push({ vaddr: v, value: 'mask' });
        break;
      }
      case R_X86_64_TLSDESC:
        // Two words: resolver function and argument, both chosen at run time.
        out.push({ vaddr: r.vaddr, value: 'mask' }, { vaddr: r.vaddr + 8n, value: 'mask' });
        break;
      default:
        // GLOB_DAT, JUMP_SLOT, 64, IRELATIVE (structure 3), DTPMOD64/DTPOFF64/TPOFF64 (run-time TLS).
        out.push({ vaddr: r.vaddr, value: 'mask' });
    }
  }
  // .got.plt reserved words GOT[1] (link_map) and GOT[2] (resolver): checked by structure 3.
  const pltgot = img.elf.dynamic?.pltgot;
  if (pltgot !== undefined) {
    for (const v of [pltgot + 8n, pltgot + 16n]) if (v >= start && v < end) out.push({ vaddr: v, value: 'mask' });
  }
  // .dynamic: glibc stores run-time addresses back into some entries and fills DT_DEBUG.
  const dynVaddr = img.dynamicVaddr;
  const dyn = img.elf.dynamic;
  if (dynVaddr !== undefined && dyn !== null) {
    dyn.entries.forEach((e, i) => {
      const valueVaddr = dynVaddr + BigInt(i * 16 + 8);
      if (valueVaddr < start || valueVaddr + 8n > end) return;
      if (e.tag === DT_DEBUG) out.push({ vaddr: valueVaddr, value: 'mask' });
      else if (DYN_ADJUSTED_TAGS.has(e.tag) && bias !== 0n) {
        // Either form is what glibc may leave there (it skips read-only dynamic sections).
        const off = Number(valueVaddr - start);
        const now = new DataView(actual.buffer, actual.byteOffset + off, 8).getBigUint64(0, true);
        if (now === BigInt.asUintN(64, e.value + bias)) out.push({ vaddr: valueVaddr, value: now });
      }
    });
  }
  return out;
}

/** Which structure a differing byte at `vaddr` belongs to. */
function classify(img: ModuleImage, vaddr: bigint, relro: boolean): StructureCode {
  if (relro) return 2;
  if (inRanges(img.exportRanges, vaddr)) return 4;
  if (img.isCode(vaddr)) return 0;
  return 1;
}

/**
 * Run-time minus link-time address for one mapping. Usually the module's load bias, but a runtime
 * may map part of its file a second time elsewhere (node maps its embedded builtins near its JIT
 * code), so it is derived from the mapping's file offset.
 */
function mappingBias(mod: Module, img: ModuleImage, mp: Mapping): bigint {
  // The module's load bias, when the mapping sits where a PT_LOAD segment puts that file offset.
  const v = mp.start - mod.loadBias;
  for (const seg of img.elf.loadSegments) {
    if (v < (seg.vaddr & ~0xfffn) || v >= seg.vaddr + seg.memsz) continue;
    if ((seg.offset & ~0xfffn) + (v - (seg.vaddr & ~0xfffn)) === mp.fileOffset) return mod.loadBias;
  }
  const alt = img.elf.offsetToVaddr(mp.fileOffset);
  return alt === undefined ? mod.loadBias : mp.start - alt;
}

/** Structure codes a mapping can produce findings for. */
function mappingCodes(img: ModuleImage, mod: Module, mp: Mapping): Set<StructureCode> {
  const start = mp.start - mappingBias(mod, img, mp);
  const end = mp.end - mappingBias(mod, img, mp);
  const codes = new Set<StructureCode>();
  if (img.relro.some((r) => overlaps(r, start, end))) codes.add(2);
  if (img.exportRanges.some((r) => overlaps(r, start, end))) codes.add(4);
  if (mp.protection.execute) codes.add(0);
  codes.add(1);
  return codes;
}

interface Run {
  /** Offset inside the mapping. */
  start: number;
  end: number;
}

/** Differing byte runs between `a` and `b` (same length), merged across small gaps. */
function diffRuns(a: Uint8Array, b: Uint8Array, base: number, out: Run[]): void {
  const n = a.length;
  for (let p = 0; p < n; p += PAGE) {
    const e = Math.min(n, p + PAGE);
    if (Buffer.compare(a.subarray(p, e), b.subarray(p, e)) === 0) continue;
    for (let i = p; i < e; i++) {
      if (a[i] === b[i]) continue;
      const last = out[out.length - 1];
      if (last !== undefined && base + i - last.end <= MERGE_GAP && base + i - last.start < MAX_RUN) last.end = base + i + 1;
      else out.push({ start: base + i, end: base + i + 1 });
    }
  }
}

/** Start of the instruction containing `vaddr`, found by decoding from the enclosing function's start. */
function instructionStart(img: ModuleImage, vaddr: bigint): bigint {
  let hit;
  try {
    hit = img.elf.findSymbolByAddress(vaddr);
  } catch {
    hit = undefined;
  }
  if (hit === undefined || !hit.contains || hit.offset > 0x100000n) return vaddr;
  const fnStart = hit.symbol.value;
  const off = img.elf.vaddrToOffset(fnStart);
  if (off === undefined) return vaddr;
  const len = Number(vaddr - fnStart) + 16;
  const code = img.fileBytes(off, len);
  let start = fnStart;
  for (const insn of iterateInstructions(code, fnStart, { text: false })) {
    if (insn.address > vaddr) break;
    start = insn.address;
    if (insn.invalid) break;
  }
  return start;
}

function texts(bytes: Uint8Array, address: bigint, max = 6): string[] {
  const out: string[] = [];
  for (const insn of iterateInstructions(bytes, address, { text: true, maxInstructions: max })) out.push(insn.invalid ? `(invalid) ${Buffer.from(insn.bytes).toString('hex')}` : insn.text);
  return out;
}

function codeFinding(ctx: ProcessContext, mod: Module, img: ModuleImage, mp: Mapping, run: Run, expected: Uint8Array, actual: Uint8Array): Finding {
  const bias = mappingBias(mod, img, mp);
  const runAddr = mp.start + BigInt(run.start);
  const runVaddr = runAddr - bias;
  const symbol = img.symbolize(runVaddr);
  const fileOffset = mp.fileOffset + BigInt(run.start);
  const exp = expected.subarray(run.start, run.end);
  const act = actual.subarray(run.start, run.end);
  // A lone INT3 is a breakpoint when someone may legitimately have put it there.
  if (act.length === 1 && act[0] === 0xcc) {
    const traced = ctx.status.tracerPid !== 0;
    const uprobe = ctx.caches.currentUprobes().some((u) => (u.path === mod.path || u.path === ctx.mappingAt(runAddr)?.path) && u.offset === fileOffset);
    if (traced || uprobe) {
      return makeFinding({
        pid: ctx.pid, code: 0, kind: 'breakpoint', severity: 'info', module: mod.path, offset: runVaddr, address: runAddr, symbol,
        expected: exp, actual: act,
        detail: traced ? `INT3 breakpoint while the process is traced by pid ${ctx.status.tracerPid}` : 'INT3 of a registered uprobe',
        instructions: { expected: texts(exp, runAddr, 1), actual: ['int3'] },
      });
    }
  }
  // Decode from the instruction boundary so the text shows what executes.
  let insnAddr = instructionStart(img, runVaddr) + bias;
  if (insnAddr > runAddr || runAddr - insnAddr > 15n) insnAddr = runAddr;
  const lead = Number(runAddr - insnAddr);
  const from = run.start - lead;
  const to = Math.min(actual.length, Math.max(run.end, from + 16));
  const actWin = actual.subarray(from, to);
  const expWin = expected.subarray(from, to);
  const hook = describeHook(actWin, insnAddr);
  let kind: FindingKind = 'modified';
  let severity: Severity = 'high';
  let detail = `${run.end - run.start} byte(s) of code differ from ${mod.path}`;
  let destination: string | undefined;
  if (hook.kind !== 'unknown' && hook.kind !== 'int3') {
    kind = 'inline-hook';
    severity = 'critical';
    if (hook.destination !== undefined) {
      destination = ctx.describeAddress(hook.destination);
      detail = `inline hook (${hook.kind}) redirects ${symbol ?? 'code'} to ${destination}`;
    } else detail = `inline hook (${hook.kind}) in ${symbol ?? 'code'}`;
  } else if (hook.kind === 'int3') {
    detail = 'INT3 in code while no debugger is attached and no uprobe is registered';
  }
  const f = makeFinding({
    pid: ctx.pid, code: 0, kind, severity, module: mod.path, offset: insnAddr - bias, address: insnAddr, symbol: img.symbolize(insnAddr - bias),
    expected: expected.slice(from, Math.max(run.end, from + hook.length)), actual: actual.slice(from, Math.max(run.end, from + hook.length)), detail,
    instructions: { expected: texts(expWin, insnAddr, 3), actual: hook.texts.length > 0 ? hook.texts : texts(actWin, insnAddr, 3) },
  });
  if (destination !== undefined) f.destination = destination;
  return f;
}

function dataFinding(ctx: ProcessContext, mod: Module, img: ModuleImage, mp: Mapping, run: Run, code: StructureCode, expected: Uint8Array, actual: Uint8Array): Finding {
  const addr = mp.start + BigInt(run.start);
  const vaddr = addr - mappingBias(mod, img, mp);
  const section = img.sectionAt(vaddr)?.name;
  const what = code === 2 ? 'relocated read-only data' : code === 4 ? 'export table' : 'read-only data';
  const f = makeFinding({
    pid: ctx.pid, code, kind: 'modified', severity: 'high', module: mod.path, offset: vaddr, address: addr, symbol: img.symbolize(vaddr),
    expected: expected.slice(run.start, run.end), actual: actual.slice(run.start, run.end),
    detail: `${run.end - run.start} byte(s) of ${what}${section ? ` (${section})` : ''} differ from ${code === 2 ? 'the file with relocations applied' : 'the file'}`,
  });
  // A changed pointer: say where it leads now.
  if (run.end - run.start <= 8 && (code === 2 || code === 1)) {
    const wordStart = run.start & ~7;
    if (wordStart + 8 <= actual.length) {
      const v = new DataView(actual.buffer, actual.byteOffset + wordStart, 8).getBigUint64(0, true);
      if (ctx.mappingAt(v) !== undefined) f.destination = ctx.describeAddress(v);
    }
  }
  return f;
}

/**
 * Compares one mapping with its expected content. Returns the findings (only for `codes`) and
 * adds the compared bytes to ctx.bytesVerified.
 */
function checkMapping(ctx: ProcessContext, mod: Module, img: ModuleImage, mp: Mapping, codes: ReadonlySet<StructureCode>): Finding[] {
  const bias = mappingBias(mod, img, mp);
  const vStart = mp.start - bias;
  const vEnd = mp.end - bias;
  const isRelro = img.relro.some((r) => overlaps(r, vStart, vEnd));
  const textrel = img.elf.dynamic?.textrel === true;
  const length = Number(mp.end - mp.start);
  // Cheap signal: no private copy of any page → the mapping shows the file's page cache.
  const cacheMs = ctx.options.cleanCacheMs;
  let cacheKey: string | undefined;
  if (cacheMs > 0 && !isRelro && !textrel) {
    const sm = ctx.smaps.get(mp.start);
    if (sm !== undefined && sm.anonymous === 0 && sm.swap === 0) {
      cacheKey = `${img.key}|${mod.buildId ?? ''}|${bias}|${mp.fileOffset}|${length}`;
      const at = ctx.caches.cleanMappings.get(cacheKey);
      if (at !== undefined && Date.now() - at < cacheMs) return [];
    }
  }
  if (length > MAX_MAPPING_COMPARE) {
    return [makeFinding({
      pid: ctx.pid, code: mp.protection.execute ? 0 : 1, kind: 'unverifiable', severity: 'medium', module: mod.path, offset: vStart, address: mp.start,
      detail: `mapping 0x${mp.start.toString(16)}-0x${mp.end.toString(16)} (${mp.perms}) of this module is ${length} bytes, more than the ${MAX_MAPPING_COMPARE} bytes compared per mapping; its bytes are unverified`,
    })];
  }
  const actual = new Uint8Array(length);
  for (let off = 0; off < length; off += READ_CHUNK) {
    const n = Math.min(READ_CHUNK, length - off);
    let part: Uint8Array;
    try {
      part = ctx.proc.readMemoryPartial(mp.start + BigInt(off), n);
    } catch {
      return []; // the process has gone: nothing to verify
    }
    if (part.length < n) {
      const bad = mp.start + BigInt(off + part.length);
      // Unmapped meanwhile (dlclose, exit): nothing to verify. Still mapped: the pages cannot be
      // read (the file was truncated beneath the mapping: access raises SIGBUS).
      if (!stillMapped(ctx, mp)) return [];
      return [makeFinding({
        pid: ctx.pid, code: mp.protection.execute ? 0 : 1, kind: 'unverifiable', severity: 'medium', module: mod.path, offset: bad - bias, address: bad,
        detail: `memory of this module from 0x${bad.toString(16)} to 0x${mp.end.toString(16)} (${mp.perms}) cannot be read although it is mapped: the file was probably truncated after it was mapped (file size now ${img.size} bytes); these bytes are unverified`,
      })];
    }
    actual.set(part, off);
  }
  // The loader's RELRO holds its start-up data (_rtld_global_ro, __libc_enable_secure, _dl_random,
  // ...), written before it is protected: only its relocated pointers are verifiable there.
  const loaderRelro = mod.kind === 'loader' && isRelro;
  let expected = loaderRelro ? new Uint8Array(actual) : img.fileBytes(mp.fileOffset, length);
  if (isRelro || textrel) {
    const overrides = relocationOverrides(ctx, mod, img, vStart, vEnd, actual, isRelro);
    if (overrides.length > 0) {
      if (!loaderRelro) expected = new Uint8Array(expected);
      const dv = new DataView(expected.buffer);
      const av = new DataView(actual.buffer);
      for (const o of overrides) {
        const off = Number(o.vaddr - vStart);
        if (o.value instanceof Uint8Array) {
          const from = Math.max(0, -off);
          const to = Math.min(o.value.length, length - off);
          if (to > from) expected.set(o.value.subarray(from, to), off + from);
          continue;
        }
        if (off < 0 || off + 8 > length) continue;
        if (o.value === 'mask') {
          if (!loaderRelro) dv.setBigUint64(off, av.getBigUint64(off, true), true);
        } else dv.setBigUint64(off, o.value, true);
      }
    }
  }
  // Sites of verified hotpatch patches belong to structure 10, which checks them against the
  // signed jumps; here they are taken as they are.
  if (mp.protection.execute) {
    for (const site of sanctionedState(ctx).claimed) {
      const off = Number(site.address - mp.start);
      if (off < 0 || off + site.bytes.length > length) continue;
      if (expected.buffer === img.elf.bytes.buffer) expected = new Uint8Array(expected);
      expected.set(actual.subarray(off, off + site.bytes.length), off);
    }
  }
  const runs: Run[] = [];
  diffRuns(expected, actual, 0, runs);
  ctx.bytesVerified += length;
  if (runs.length === 0) {
    if (cacheKey !== undefined) ctx.caches.cleanMappings.set(cacheKey, Date.now());
    return [];
  }
  const out: Finding[] = [];
  for (const run of runs) {
    if (out.length >= MAX_FINDINGS_PER_MAPPING) {
      out.push(makeFinding({
        pid: ctx.pid, code: isRelro ? 2 : mp.protection.execute ? 0 : 1, kind: 'modified', severity: 'high', module: mod.path,
        offset: vStart, address: mp.start, detail: `${runs.length - MAX_FINDINGS_PER_MAPPING} more differing ranges in this mapping not listed`,
      }));
      break;
    }
    const code = classify(img, mp.start + BigInt(run.start) - bias, isRelro);
    if (!codes.has(code)) continue;
    out.push(code === 0 ? codeFinding(ctx, mod, img, mp, run, expected, actual) : dataFinding(ctx, mod, img, mp, run, code, expected, actual));
  }
  return out;
}

/** The mapped file against its package checksum and its first-seen identity (reported as structure 0). */
function checkFileIdentity(ctx: ProcessContext, mod: Module): Finding[] {
  if (mod.mapFilesPath === undefined || mod.path.startsWith('/memfd:')) return [];
  let id;
  try {
    id = ctx.caches.identities.identify(mod.mapFilesPath);
  } catch {
    return [];
  }
  const out: Finding[] = [];
  const pkg = mod.deleted ? undefined : ctx.caches.dpkg.lookup(mod.path);
  if (pkg !== undefined) {
    if (pkg.md5 !== id.md5) {
      out.push(makeFinding({
        pid: ctx.pid, code: 0, kind: 'file-changed', severity: 'critical', module: mod.path,
        detail: `mapped file differs from the checksum recorded by package ${pkg.package} (md5 ${id.md5}, package says ${pkg.md5}); run \`dpkg --verify ${pkg.package.split(':')[0]}\``,
      }));
    }
    return out;
  }
  // A deleted file (replaced on disk since it was mapped, e.g. by an update) has no path to key
  // its identity by; it is reported as structure 5 (deleted-code) instead.
  if (mod.deleted) return out;
  const written = fileWritten(ctx, mod);
  const first = ctx.options.state.firstSeenIdentity(mod.path, { buildId: mod.buildId ?? null, sha256: id.sha256, size: id.size });
  if (first.sha256 !== id.sha256) {
    const sameBuild = first.buildId !== null && first.buildId === (mod.buildId ?? null);
    out.push(makeFinding({
      pid: ctx.pid, code: 0, kind: 'file-changed', severity: sameBuild ? 'critical' : 'medium', module: mod.path,
      detail: sameBuild
        ? `mapped file has the build-id first seen (${first.buildId}) but different content (sha256 ${id.sha256}, first seen ${first.sha256} at ${first.firstSeen}): modified in place`
        : `mapped file differs from the one first seen at ${first.firstSeen} (build-id ${first.buildId ?? 'none'} → ${mod.buildId ?? 'none'}); if this was an update, remove its entry from the guard state`,
    }));
  } else if (written !== undefined) out.push(written);
  return out;
}

/** Slack for the 1 s resolution of the boot time the process start is computed from. */
const START_SLACK_MS = 1500;

/**
 * A module file that no package vouches for, written while it is mapped: memory equals the file
 * (the page cache is the file), but the file is not what was loaded — and a first-seen identity
 * taken now would trust it. Evidence: the file's stat changed since this verifier first saw the
 * mapping (critical), or its mtime/ctime is after the process started (high; also the case of a
 * file installed after the start and loaded later, which the detail says).
 */
function fileWritten(ctx: ProcessContext, mod: Module): Finding | undefined {
  if (mod.mapFilesPath === undefined) return undefined;
  let st;
  try {
    st = statSync(mod.mapFilesPath);
  } catch {
    return undefined;
  }
  const key = statKey(st);
  const mk = `${ctx.pid}:${ctx.proc.startTime}:${mod.base}:${mod.dev}:${mod.inode}`;
  const prev = ctx.caches.mappedFileStats.get(mk);
  if (prev === undefined) ctx.caches.mappedFileStats.set(mk, { key, seen: Date.now() });
  const changed = Math.max(st.mtimeMs, st.ctimeMs);
  const when = new Date(changed).toISOString();
  if (prev !== undefined && prev.key !== key) {
    return makeFinding({
      pid: ctx.pid, code: 0, kind: 'file-written', severity: 'critical', module: mod.path,
      detail: `mapped file was written (modified ${when}) after the verifier first saw it mapped at ${new Date(prev.seen).toISOString()}: the code now running is the new content, not what was loaded`,
    });
  }
  const started = ctx.startedAtMs;
  if (changed > started + START_SLACK_MS) {
    return makeFinding({
      pid: ctx.pid, code: 0, kind: 'file-written', severity: 'high', module: mod.path,
      detail: `mapped file was modified (mtime/ctime ${when}) after the process started (${new Date(started).toISOString()}) and no package vouches for its content: either it was changed beneath the running code (which now runs the new bytes) or it was installed after the start and loaded later`,
    });
  }
  return undefined;
}

/** Runs the image comparison of every module for the requested structure codes (subset of 0, 1, 2, 4). */
export function checkImages(ctx: ProcessContext, codes: ReadonlySet<StructureCode>): Finding[] {
  const out: Finding[] = [];
  for (const mod of ctx.modules) {
    if (mod.kind === 'vdso') continue;
    // One module that cannot be checked (hostile file, unexpected error) is a finding about that
    // module only: the others are still verified.
    try {
      out.push(...checkModule(ctx, mod, codes));
    } catch (e) {
      if (e instanceof ProcessError && (e.code === PROCESS_NOT_FOUND || e.code === PROCESS_ZOMBIE)) throw e;
      out.push(makeFinding({
        pid: ctx.pid, code: 0, kind: 'unverifiable', severity: 'medium', module: mod.path,
        detail: `checking this module failed (${(e as Error).message}); its code and data are unverified, the other modules were checked`,
      }));
    }
  }
  return out;
}

function checkModule(ctx: ProcessContext, mod: Module, codes: ReadonlySet<StructureCode>): Finding[] {
  const out: Finding[] = [];
  const img = ctx.image(mod);
  if (img === null) {
    if (mod.mappings.some((m) => m.protection.execute)) {
      const problem = ctx.imageProblem(mod);
      const noAccess = problem === undefined || /^cannot open/.test(problem);
      out.push(makeFinding({
        pid: ctx.pid, code: 0, kind: 'unverifiable', severity: noAccess ? 'low' : 'medium', module: mod.path,
        detail: noAccess
          ? `cannot read the mapped file of this module through ${mod.mapFilesPath ?? mod.path} (needs root); its code is unverified`
          : `the mapped file of this module cannot be verified: ${problem}; its code is unverified, the other modules were checked`,
      }));
    }
    return out;
  }
  if (codes.has(0)) out.push(...checkFileIdentity(ctx, mod));
  for (const mp of mod.mappings) {
    if (mp.protection.write || !mp.protection.read && !mp.protection.execute) continue;
    const mc = mappingCodes(img, mod, mp);
    if (![...mc].some((c) => codes.has(c))) continue;
    out.push(...checkMapping(ctx, mod, img, mp, codes));
  }
  return out;
}
