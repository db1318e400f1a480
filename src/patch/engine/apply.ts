/**
 * applyPatch: validate → place and link → (setup freeze: record/arena mappings, only when needed)
 * → write new code → write-ahead record → freeze, check, switch, thaw → commit.
 * Everything but the thread check and the site writes happens while the target runs.
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { HotpatchError, RefusedError } from '../../errors.js';
import { parseElf, type ElfFile } from '../../elf/index.js';
import type { Module } from '../../process/index.js';
import { branchesInto, canJmpRel32, decodeFunction, JMP_REL32_SIZE } from '../../x86/index.js';
import { createSymbolLookup, layoutPatch, linkPatch, type ResolverModule } from '../linker/index.js';
import type { PatchPlan, TargetIdentity } from '../plan.js';
import { arenaSizeFor, findArenaSpace, newArena } from './arena.js';
import { freeze, hijack, type Frozen } from './control.js';
import { faultPoint } from './fault.js';
import { memoryWriter } from './memory.js';
import { RECORD_FILE_SIZE, RECORD_MEMFD_NAME, type PatchRecord, type RecordSigning, type RecordArena, type RecordPatch, type RecordSite } from './record.js';
import { assertCodeAgrees, assertNoTransaction, hex, nowMicros, openSession, openStoreAt, siteStack, type Session } from './session.js';
import { bytesEqual, hexBytes, siteGeometry, siteUnsafeRanges, siteWrites, siteWrittenBytes, type SiteGeometry, type SiteWrite } from './sites.js';
import { switchWithRetry, type GuardedRange } from './switch.js';
import { freeUnusedRetired, reclaimRetired, retiredRanges, undoLiveApply, unmapFresh } from './cleanup.js';
import { findRevivable, reviveRetired, type ReviveRequest } from './revive.js';
import { registerUnwind, unregisterUnwind } from './unwind.js';
import { encodeGateBlock, gateAddress, gateBlockOffset, gateBlockSize } from './gate.js';
import { FOLLOWING_BYTES, liveRefusal, switchAllLive } from './live.js';

/** Options of {@link applyPatch}. */
export interface ApplyOptions {
  /** Patch id (from the package). */
  patchId: string;
  /** SHA-256 (hex) of the package file; "" when applying a bare plan. */
  packageHash?: string;
  /** Signer key id (from the package), or null when unsigned. */
  signer?: string | null;
  /** The verified package signature, stored in the record for the guard. */
  signing?: RecordSigning;
  /** The package's signed content section (see RecordPatch.content), stored in the record. */
  content?: Uint8Array;
  /** How long to retry while threads are in the way (default 5000 ms). */
  timeoutMs?: number;
  /** Validate, resolve and link only; change nothing. */
  dryRun?: boolean;
  /** Switch in a freeze of every thread even where the zero-stall protocol could be used. */
  freeze?: boolean;
}

/** Result of {@link applyPatch}. */
export interface ApplyResult {
  pid: number;
  patchId: string;
  status: 'patched' | 'already-patched' | 'dry-run';
  /**
   * `live`: switched while every thread ran (./live.ts, ./gate.ts); `freeze`: in a freeze of every
   * thread (./switch.ts). `liveRefusal` says why the freeze was used.
   */
  protocol: 'live' | 'freeze';
  liveRefusal?: string;
  /** Pause of the freeze that switched the functions (µs); 0 for dry runs / already patched. */
  pauseMicros: number;
  /** Pause of the extra freeze that mapped the arena / record (µs); 0 when none was needed. */
  setupPauseMicros: number;
  /** Of the pause, the time spent by the engine's own check and writes (µs); the rest is attach/detach. */
  frozenWorkMicros: number;
  /** Sum of all freezes, busy retries included (µs). */
  totalPauseMicros: number;
  attempts: number;
  threads: number;
  /** Wall time of the whole operation (µs). */
  totalMicros: number;
  /** Live protocol: time from the first padding write to the flag write (µs), while threads ran. */
  switchMicros?: number;
  /** The same patch, removed live and still retired, was switched on again (./revive.ts). */
  revived?: boolean;
  functions: Array<{ name: string; address: bigint; kind: 'padded' | 'plain'; newCode: bigint; stacked: boolean }>;
}

interface SitePrep {
  fnIndex: number;
  name: string;
  file?: string;
  g: SiteGeometry;
  /** Bytes at the site now (the layer below this patch). */
  current: Uint8Array;
  stacked: boolean;
}

function fnLabel(name: string, file?: string): string {
  return file ? `${name} (${file})` : name;
}

/** The module the plan targets; refuses on a build-id mismatch. */
export function findTargetModule(modules: readonly Module[], target: TargetIdentity, pid: number): Module {
  const byId = modules.find((m) => m.buildId !== undefined && m.buildId === target.buildId.toLowerCase());
  if (byId) return byId;
  const byName = modules.find((m) => m.name === target.name);
  if (byName) {
    throw new RefusedError(
      'BUILD_ID_MISMATCH',
      `process ${pid} runs ${byName.path} with build-id ${byName.buildId ?? '(none)'}, but the patch was built for build-id ${target.buildId}: ` +
        'this patch does not fit this build; nothing was changed',
    );
  }
  throw new RefusedError('MODULE_NOT_LOADED', `process ${pid} has no module ${target.name} with build-id ${target.buildId} loaded; nothing was changed`);
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
}

function mismatch(fn: string, address: bigint, expected: Uint8Array, actual: Uint8Array, note: string): RefusedError {
  const i = firstDifference(expected, actual);
  return new RefusedError(
    'SITE_MISMATCH',
    `${fn} at ${hex(address)}: expected ${hexBytes(expected)}, found ${hexBytes(actual)} (first difference at +${i}${note}); ` +
      'the process does not run the code this patch was built for; nothing was changed',
  );
}

function elfLoader(m: Module): () => ElfFile | undefined {
  let cached: ElfFile | undefined | null = null;
  return () => {
    if (cached === null) {
      try {
        cached = parseElf(new Uint8Array(readFileSync(m.mapFilesPath ?? m.path)));
      } catch {
        cached = undefined;
      }
    }
    return cached;
  };
}

function resolverModule(m: Module): ResolverModule {
  return { name: m.name, path: m.path, loadBias: m.loadBias, elf: elfLoader(m) };
}

/**
 * Validates every site against memory (and the record for stacked patches). Writes nothing. A dry
 * run takes a padding that still leads to a retired gate as reset (the apply resets it first).
 */
function validateSites(s: Session, plan: PatchPlan, module: Module, dryRun: boolean): SitePrep[] {
  const out: SitePrep[] = [];
  plan.functions.forEach((fn, fnIndex) => {
    const label = fnLabel(fn.name, fn.file);
    const g = siteGeometry(fn.entry, module.loadBias, label);
    if (out.some((o) => g.address < o.g.address + BigInt(o.g.length) && o.g.address < g.address + BigInt(g.length))) {
      throw new RefusedError('PLAN_OVERLAP', `two functions of the plan patch overlapping bytes at ${hex(g.address)}: rebuild the package`);
    }
    let current = s.proc.readMemory(g.address, g.length);
    const stack = siteStack(s.record, g.address);
    const top = stack[stack.length - 1];
    if (top) {
      // Stacked: the plan's expected bytes are those of the file, i.e. the bottom layer's original.
      const bottom = stack[0]!.site;
      if (top.site.kind !== g.kind || top.site.original.length !== g.length) {
        throw new RefusedError('STACK_GEOMETRY', `${label} at ${hex(g.address)} is patched by ${top.patch.id} with a different entry layout; remove it first`);
      }
      if (!bytesEqual(bottom.original, fn.entry.expected)) {
        throw mismatch(label, g.address, fn.entry.expected, bottom.original, ', original bytes recorded when it was first patched');
      }
      if (!bytesEqual(current, top.site.written)) throw mismatch(label, g.address, top.site.written, current, `, bytes written by patch ${top.patch.id}`);
    } else {
      const overlapping = s.record.patches.some((p) => p.state !== 'removed' && p.sites.some((x) => x.address !== g.address && x.address < g.address + BigInt(g.length) && g.address < x.address + BigInt(x.original.length)));
      if (overlapping) throw new RefusedError('STACK_GEOMETRY', `${label} at ${hex(g.address)} overlaps a site of another patch with a different layout`);
      if (!bytesEqual(current, fn.entry.expected)) {
        // The padding jump a live remove left: a thread was still in it when the engine looked.
        const retired = s.record.patches.find((p) => p.state === 'removed' && p.sites.some((x) => x.address === g.address && x.gate !== undefined && bytesEqual(current.subarray(0, JMP_REL32_SIZE), x.written.subarray(0, JMP_REL32_SIZE))));
        const asReset = new Uint8Array(current);
        asReset.set(fn.entry.expected.subarray(0, JMP_REL32_SIZE), 0);
        if (retired && dryRun && bytesEqual(asReset, fn.entry.expected)) {
          current = asReset;
        } else if (retired) {
          throw new RefusedError('TARGET_BUSY', `${label} at ${hex(g.address)}: a thread was still inside the code of the removed patch ${retired.id} when it was checked; nothing was changed: retry in a moment`);
        } else {
          throw mismatch(label, g.address, fn.entry.expected, current, '');
        }
      }
    }
    if (g.kind === 'plain') checkPlainEntry(s, fn.vaddr + module.loadBias, fn.size, g, label, top ? stack[0]!.site.original : current);
    const prep: SitePrep = { fnIndex, name: fn.name, g, current, stacked: top !== undefined };
    if (fn.file !== undefined) prep.file = fn.file;
    out.push(prep);
  });
  return out;
}

/** A 5-byte jump over a plain entry: the function must be long enough and no branch may land in bytes 1–4. */
function checkPlainEntry(s: Session, fnAddress: bigint, fnSize: number, g: SiteGeometry, label: string, originalSiteBytes: Uint8Array): void {
  const siteOffset = Number(g.address - fnAddress);
  if (siteOffset < 0 || siteOffset + g.length > fnSize) {
    throw new RefusedError('FUNCTION_TOO_SMALL', `${label} is ${fnSize} bytes long: a 5-byte jump at +${siteOffset} would overwrite the next function; nothing was changed`);
  }
  const code = s.proc.readMemory(fnAddress, fnSize);
  code.set(originalSiteBytes, siteOffset);
  const insns = decodeFunction(code, fnAddress, { text: false });
  const into = branchesInto(insns, g.address + 1n, g.address + BigInt(g.length));
  if (into.length > 0) {
    const b = into[0]!;
    throw new RefusedError(
      'BRANCH_INTO_SITE',
      `${label}: the ${b.flow} at ${hex(b.from)} targets ${hex(b.target)}, byte ${Number(b.target - g.address)} of the 5 bytes a jump at the entry would overwrite; ` +
        'this entry cannot be patched without padding (rebuild with -fpatchable-function-entry=7,5); nothing was changed',
    );
  }
}

/** Applies `plan` to process `pid` (see the module comment for the protocol). */
export async function applyPatch(pid: number, plan: PatchPlan, options: ApplyOptions): Promise<ApplyResult> {
  const t0 = nowMicros();
  const timeoutMs = options.timeoutMs ?? 5000;
  if (plan.functions.length === 0) throw new RefusedError('PLAN_EMPTY', 'the patch changes no function; nothing to apply');
  const s = openSession(pid);
  try {
    faultPoint('apply:locked', pid);
    assertNoTransaction(s.record, pid);
    assertCodeAgrees(s);
    const base: Omit<ApplyResult, 'status' | 'protocol'> = {
      pid, patchId: options.patchId, pauseMicros: 0, frozenWorkMicros: 0, setupPauseMicros: 0, totalPauseMicros: 0, attempts: 0, threads: 0, totalMicros: 0, functions: [],
    };
    if (s.record.patches.some((p) => p.id === options.patchId && p.state === 'applied')) {
      return { ...base, status: 'already-patched', protocol: 'freeze', totalMicros: nowMicros() - t0 };
    }
    const modules = s.proc.enumerateModules();
    const module = findTargetModule(modules, plan.target, pid);
    const lookup = createSymbolLookup(resolverModule(module), modules.filter((m) => m !== module && m.kind !== 'vdso').map(resolverModule));
    // The same patch removed live and still retired: switched on again by its entries and flag.
    if (!options.freeze && s.store) {
      const request: ReviveRequest = {
        patchId: options.patchId, packageHash: options.packageHash ?? '', signer: options.signer ?? null, module, lookup, timeoutMs,
        ...(options.signing !== undefined ? { signing: options.signing } : {}), ...(options.content !== undefined ? { content: options.content } : {}),
      };
      let revived: { patch: RecordPatch; switchMicros?: number } | undefined;
      if (options.dryRun) {
        const patch = findRevivable(s, plan, request);
        if (patch) revived = { patch };
      } else revived = await reviveRetired(s, plan, request);
      if (revived) {
        if (!options.dryRun) await reclaimRetired(s, timeoutMs, 'lazy');
        return {
          ...base, status: options.dryRun ? 'dry-run' : 'patched', protocol: 'live', revived: true, attempts: options.dryRun ? 0 : 1,
          threads: s.proc.enumerateThreads().length, totalMicros: nowMicros() - t0, ...(revived.switchMicros !== undefined ? { switchMicros: revived.switchMicros } : {}),
          functions: revived.patch.sites.map((x) => ({ name: x.function, address: x.address, kind: x.kind, newCode: x.newCode.start, stacked: false })),
        };
      }
    }
    if (!options.dryRun) {
      // Retired code is freed first; a padding of this plan that still leads to a retired gate must
      // be reset before the function can be patched, which needs the running threads checked too.
      // A thread still inside leaves soon (nothing leads in any more): checked again until --timeout.
      const siteAddresses = new Set(plan.functions.map((fn) => fn.entry.siteVaddr + module.loadBias));
      const blocked = (): boolean => retiredRanges(s.record).some((r) => r.padding !== undefined && siteAddresses.has(r.padding.address) &&
        bytesEqual(s.proc.readMemory(r.padding.address, JMP_REL32_SIZE), r.padding.written.subarray(0, JMP_REL32_SIZE)));
      await reclaimRetired(s, timeoutMs, blocked() ? 'stop' : 'lazy');
      const deadline = Date.now() + timeoutMs;
      for (let backoffMs = 1; blocked() && Date.now() < deadline; backoffMs = Math.min(50, backoffMs * 2)) {
        await new Promise((r) => setTimeout(r, backoffMs));
        await reclaimRetired(s, timeoutMs, 'stop');
      }
    }
    const sites = validateSites(s, plan, module, options.dryRun === true);
    const layout = layoutPatch(plan);
    const following = sites.map((x) => s.proc.readMemory(x.g.switchAddress + 2n, FOLLOWING_BYTES));
    const whyFreeze = options.freeze
      ? 'asked for --freeze'
      : liveRefusal(sites.map((x, i) => ({ name: fnLabel(x.name, x.file), g: x.g, current: x.current, stacked: x.stacked, following: following[i]! })));
    const live = whyFreeze === undefined;
    const protocol = live ? ('live' as const) : ('freeze' as const);
    // Live: the gate block follows the code in the patch's code range.
    const codeSize = live ? gateBlockOffset(layout.codeSize) + gateBlockSize(sites.length) : layout.codeSize;

    const reachCode = (a: bigint, b: bigint): boolean => sites.every((x) => canJmpRel32(x.g.address, a) && canJmpRel32(x.g.address, b));
    const reachData = (a: bigint, b: bigint): boolean => canJmpRel32(module.base, a) && canJmpRel32(module.end, b);
    let codeBase = findArenaSpace(s.record, 'code', codeSize, layout.codeAlign, reachCode);
    let dataBase = layout.dataSize > 0 ? findArenaSpace(s.record, 'data', layout.dataSize, layout.dataAlign, reachData) : 0n;
    // Variables are reached from the new code (rip-relative) as well as from the module's reach.
    const reachVars = (a: bigint, b: bigint): boolean => reachData(a, b) && (codeBase === undefined || (canJmpRel32(codeBase, b) && canJmpRel32(codeBase + BigInt(codeSize), a)));
    let varsBase = layout.varsSize > 0 ? findArenaSpace(s.record, 'vars', layout.varsSize, layout.varsAlign, reachVars) : 0n;

    if (options.dryRun) {
      // Link against a hypothetical placement just past the module to prove every symbol resolves.
      const hypo = ((module.end + 0xfffffn) & ~0xfffffn) + 0x100000n;
      linkPatch(plan, layout, codeBase ?? hypo, dataBase ?? hypo + 0x100000n, { loadBias: module.loadBias, lookupSymbol: lookup }, varsBase ?? hypo + 0x200000n);
      return { ...base, status: 'dry-run', protocol, ...(whyFreeze !== undefined ? { liveRefusal: whyFreeze } : {}), totalMicros: nowMicros() - t0, functions: sites.map((x) => ({ name: x.name, address: x.g.address, kind: x.g.kind, newCode: 0n, stacked: x.stacked })) };
    }

    // Setup freeze, only when the record or an arena with room does not exist yet.
    const fresh = { record: false, arenas: [] as RecordArena[] };
    let setupPause = 0;
    if (!s.store || codeBase === undefined || dataBase === undefined || varsBase === undefined) {
      // Live: the system calls run in one hijacked thread while the others keep running.
      const frozen = live ? hijack(pid, timeoutMs) : freeze(pid, timeoutMs);
      try {
        let codeArena: RecordArena | undefined;
        if (codeBase === undefined) {
          const size = arenaSizeFor('code', codeSize, layout.codeAlign);
          codeArena = newArena(frozen.mapNear(sites[0]!.g.address, size, 'r-x'), size, 'code', module.path);
          fresh.arenas.push(codeArena);
        }
        if (!s.store) {
          // No record without arenas, so a fresh code arena exists: its first bytes hold the memfd name.
          if (!codeArena) throw new HotpatchError('RECORD_MISSING', `process ${pid} has patch arenas but no record`);
          const at = frozen.createSharedMemfdMapping(RECORD_MEMFD_NAME, RECORD_FILE_SIZE, codeArena.start);
          frozen.write(codeArena.start, new Uint8Array(RECORD_MEMFD_NAME.length + 1));
          s.store = openStoreAt(pid, at, RECORD_FILE_SIZE);
          s.record = s.store.record;
          fresh.record = true;
        }
        if (codeArena) {
          // Recorded at once (still frozen) so a crash right after cannot leak it unrecorded.
          s.record = s.store.write({ ...s.record, arenas: [...s.record.arenas, codeArena] });
          codeBase = findArenaSpace(s.record, 'code', codeSize, layout.codeAlign, reachCode);
        }
        if (dataBase === undefined) {
          const size = arenaSizeFor('data', layout.dataSize, layout.dataAlign);
          const a = newArena(frozen.mapNear(module.base, size, 'r--'), size, 'data', module.path);
          fresh.arenas.push(a);
          s.record = s.store.write({ ...s.record, arenas: [...s.record.arenas, a] });
          dataBase = findArenaSpace(s.record, 'data', layout.dataSize, layout.dataAlign, reachData);
        }
        if (varsBase === undefined) {
          const size = arenaSizeFor('vars', layout.varsSize, layout.varsAlign);
          const a = newArena(frozen.mapNear(codeBase ?? module.base, size, 'rw-'), size, 'vars', module.path);
          fresh.arenas.push(a);
          s.record = s.store.write({ ...s.record, arenas: [...s.record.arenas, a] });
          varsBase = findArenaSpace(s.record, 'vars', layout.varsSize, layout.varsAlign, reachVars);
        }
      } finally {
        setupPause = frozen.thaw();
      }
      if (codeBase === undefined || dataBase === undefined || varsBase === undefined) {
        await unmapFresh(s, fresh);
        throw new HotpatchError('ARENA_UNREACHABLE', `no memory could be mapped within ±2 GiB of every patched function in ${module.path}`);
      }
    }
    faultPoint('apply:arena-mapped', pid);
    const store = s.store!;

    let entry: RecordPatch | undefined;
    /** A live switch began: undoing needs the reverse writes, not just dropping the entry. */
    let switching = false;
    const commit = (pending: RecordPatch): void => {
      const committed: RecordPatch = { ...pending, state: 'applied', sites: pending.sites.map((x) => ({ ...x, state: 'applied' })) };
      s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => (p === pending ? committed : p)) });
      faultPoint('apply:committed', pid);
    };
    try {
      const linked = linkPatch(plan, layout, codeBase, dataBase, { loadBias: module.loadBias, lookupSymbol: lookup }, varsBase);
      const block = live ? codeBase + BigInt(gateBlockOffset(layout.codeSize)) : undefined;
      const mem = memoryWriter(pid);
      try {
        mem.writeVerified(codeBase, linked.code);
        if (linked.data.length > 0) mem.writeVerified(dataBase, linked.data);
        // Initial values of the variables: nothing runs the new code yet, so no thread sees them change.
        if (linked.vars.length > 0) mem.writeVerified(varsBase, linked.vars);
        // Gates with the flag clear: even once entries lead here, they run the old code.
        if (block !== undefined) {
          mem.writeVerified(block, encodeGateBlock(block, sites.map((x) => ({ newCode: linked.functionAddresses[x.fnIndex]!, oldBody: x.g.switchAddress + 2n })), 0));
        }
      } finally {
        mem.close();
      }
      faultPoint('apply:code-written', pid);

      const siteRecords: RecordSite[] = sites.map((x, i) => {
        const fn = plan.functions[x.fnIndex]!;
        const target = linked.functionAddresses[x.fnIndex]!;
        const gate = block !== undefined ? gateAddress(block, i) : undefined;
        const rs: RecordSite = {
          function: x.name, kind: x.g.kind, address: x.g.address, switchAddress: x.g.switchAddress,
          original: x.current, written: siteWrittenBytes(x.g, x.current, gate ?? target),
          newCode: { start: target, end: target + BigInt(fn.code.length) },
          codeSha256: createHash('sha256').update(linked.code.subarray(Number(target - codeBase!), Number(target - codeBase!) + fn.code.length)).digest('hex'),
          state: 'pending',
        };
        if (x.file !== undefined) rs.file = x.file;
        if (gate !== undefined) rs.gate = gate;
        return rs;
      });
      entry = {
        id: options.patchId, packageHash: options.packageHash ?? '', signer: options.signer ?? null,
        module: { path: module.path, name: module.name, buildId: module.buildId ?? '', loadBias: module.loadBias },
        state: 'pending', appliedAt: Date.now(),
        code: { start: codeBase, end: codeBase + BigInt(codeSize) },
        data: layout.dataSize > 0 ? { start: dataBase, end: dataBase + BigInt(layout.dataSize) } : null,
        ...(layout.varsSize > 0 ? { vars: { start: varsBase, end: varsBase + BigInt(layout.varsSize) } } : {}),
        sites: siteRecords,
        relocations: linked.resolved.map((r) => ({ ...r })),
      };
      if (options.signing !== undefined) entry.signing = options.signing;
      if (options.content !== undefined) entry.content = options.content;
      if (block !== undefined) entry.flag = block;
      s.record = store.write({
        ...s.record,
        transaction: { op: 'apply', patchId: options.patchId, ownerPid: process.pid, startedAt: Date.now() },
        patches: [...s.record.patches, entry],
      });
      faultPoint('apply:record-pending', pid);
      const unwindPause = await registerUnwind(s, entry, plan, linked.dataAddresses, { modules, lookup, timeoutMs });

      const functions = sites.map((x, i) => ({ name: x.name, address: x.g.address, kind: x.g.kind, newCode: siteRecords[i]!.newCode.start, stacked: x.stacked }));
      if (block !== undefined) {
        switching = true;
        const w0 = nowMicros();
        switchAllLive(pid, sites.map((x, i) => ({ g: x.g, record: siteRecords[i]!, following: following[i]! })), block);
        const work = nowMicros() - w0;
        s.proc.assertAlive();
        commit(entry);
        return {
          ...base, status: 'patched', protocol, pauseMicros: 0, frozenWorkMicros: 0, setupPauseMicros: setupPause,
          totalPauseMicros: setupPause + unwindPause, attempts: 1, threads: s.proc.enumerateThreads().length, totalMicros: nowMicros() - t0, functions,
          switchMicros: work,
        };
      }
      const writes: Array<{ site: RecordSite; g: SiteGeometry; writes: SiteWrite[] }> = sites.map((x, i) => ({
        site: siteRecords[i]!, g: x.g, writes: siteWrites(x.g, x.current, siteRecords[i]!.written, 'apply'),
      }));
      const guarded: GuardedRange[] = writes.flatMap((w) =>
        siteUnsafeRanges(w.g, w.writes).map((range) => ({ range, function: fnLabel(w.site.function, w.site.file), what: w.g.kind === 'plain' ? 'the 5 bytes at the entry' : 'the patched entry bytes' })),
      );
      const retired = retiredRanges(s.record);
      const outcome = await switchWithRetry({
        pid, guarded, observed: retired.map((r) => r.range), timeoutMs,
        write: (frozen) => {
          faultPoint('apply:frozen', pid);
          writeSitesAllOrNothing(frozen, writes.map((w) => ({ address: w.g.address, writes: w.writes, before: w.site.original })), 'apply');
        },
      });
      faultPoint('apply:thawed', pid);
      // A process killed while frozen accepts the writes and dies: do not report it as patched.
      s.proc.assertAlive();
      commit(entry);
      await freeUnusedRetired(s, retired, outcome.observedInUse);
      return {
        ...base, status: 'patched', protocol, liveRefusal: whyFreeze, pauseMicros: outcome.pauseMicros, frozenWorkMicros: outcome.workMicros, setupPauseMicros: setupPause,
        totalPauseMicros: outcome.totalPauseMicros + setupPause + unwindPause, attempts: outcome.attempts, threads: outcome.threads,
        totalMicros: nowMicros() - t0, functions,
      };
    } catch (e) {
      // Nothing was switched (the switch is all or nothing): drop the pending entry, unmap what we mapped.
      try {
        if (entry && switching) await undoLiveApply(s, entry, timeoutMs);
        else if (entry) {
          await unregisterUnwind(s, entry, timeoutMs);
          const pending = entry;
          s.record = store.write({ ...s.record, transaction: null, patches: s.record.patches.filter((p) => p !== pending) });
        }
        await unmapFresh(s, fresh);
      } catch {
        /* the original error is what the user needs; recover handles the rest */
      }
      throw e;
    }
  } finally {
    s.close();
  }
}

/**
 * Performs site writes while frozen; on any failure restores every byte written so far (reverse
 * order) and rethrows, so the plan switches all or nothing.
 */
export function writeSitesAllOrNothing(
  frozen: Frozen,
  sites: ReadonlyArray<{ address: bigint; writes: readonly SiteWrite[]; before: Uint8Array }>,
  op: 'apply' | 'remove',
): void {
  const done: Array<{ address: bigint; bytes: Uint8Array }> = [];
  try {
    sites.forEach((site, i) => {
      for (const w of site.writes) {
        const address = site.address + BigInt(w.offset);
        const old = site.before.slice(w.offset, w.offset + w.bytes.length);
        frozen.write(address, w.bytes);
        done.push({ address, bytes: old });
        if (op === 'apply' && w.bytes.length === 5 && site.writes.length > 1) faultPoint('apply:padding-written', frozen.pid);
      }
      if (i === 0) faultPoint(op === 'apply' ? 'apply:first-site-switched' : 'remove:first-site-restored', frozen.pid);
    });
    faultPoint(op === 'apply' ? 'apply:sites-written' : 'remove:sites-restored', frozen.pid);
  } catch (e) {
    for (const d of done.reverse()) {
      try {
        frozen.write(d.address, d.bytes);
      } catch {
        /* the process is gone: nothing left to restore */
      }
    }
    throw e;
  }
}

export type { PatchRecord };
