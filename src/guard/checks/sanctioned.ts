/**
 * Structure 10: sanctioned patches. The engine's in-process record (src/patch/engine/record.ts)
 * carries, for each applied patch, the signed package content, its signature and the resolved
 * relocations. From that alone this check re-derives what memory must hold and compares:
 * - the signature verifies (ed25519 over the signed message, which holds sha256 of the content) and
 *   the signer is trusted (--trust / HOTPATCH_TRUSTED_KEYS / /etc/hotpatch/trusted.d + policy);
 * - the plan's target is the module it was applied to (build-id);
 * - the arena code and data equal the signed code and data linked at the recorded arena addresses,
 *   with every symbol resolved independently against the loaded modules (not taken from the record);
 * - each site holds the jump(s) the signed entry plan specifies, on top of the signed original bytes
 *   (or of the patch below it, for stacked patches).
 * Verified patches are "sanctioned": their site bytes are expected by structure 0 and their arenas
 * are not injected memory for structure 5.
 */
import { createHash, verify as edVerify } from 'node:crypto';
import { HotpatchError } from '../../errors.js';
import { describeHook } from '../../x86/index.js';
import type { ElfFile } from '../../elf/index.js';
import { RECORD_MAPS_PATH, readRecordFromMappings, type PatchRecord, type RecordPatch, type RecordSite } from '../../patch/engine/index.js';
import { siteGeometry, siteWrittenBytes } from '../../patch/engine/sites.js';
import { encodeGateBlock, gateAddress, gateBlockOffset } from '../../patch/engine/gate.js';
import { createSymbolLookup, layoutPatch, linkPatch, type ResolverModule } from '../../patch/linker/index.js';
import { decodePackageContent } from '../../patch/package/index.js';
import { publicKeyObject } from '../../patch/trust/index.js';
import type { PatchPlan } from '../../patch/plan.js';
import type { Module } from '../../process/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';

/** A site whose bytes a verified patch sanctions. */
export interface SanctionedSite {
  address: bigint;
  bytes: Uint8Array;
  /** The patched function. */
  function: string;
}

export interface SanctionedState {
  /** The record as read, or null when the process was never patched. */
  record: PatchRecord | null;
  findings: Finding[];
  /**
   * Every site of a verified patch, whatever memory holds there now: structure 10 owns these bytes
   * (a tampered one is a `patch-site-modified` finding), so structure 0 does not judge them against
   * the file — restoring the file's bytes into half a site would break the function.
   */
  claimed: SanctionedSite[];
  /** Start addresses of arena mappings owned by verified patches. */
  arenas: Set<bigint>;
}

function sha256(b: Uint8Array): Buffer {
  return createHash('sha256').update(b).digest();
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/**
 * The plan inside a package content section. The package module decodes content only as part of a
 * whole package, so a minimal container (magic, version, one CONT section) is framed around it.
 * TEMPORARY ADAPTER: replace with an exported content decoder when src/patch/package offers one.
 */
/** Offset of sha256(content) in the signed message: domain string, then u16 format version. */
const DOMAIN_LENGTH = new TextEncoder().encode('hotpatch-package-signature-v1\0').length;


/** Where a live patch's gate block must be: right after its linked code. */
function gateBlockFor(codeBase: bigint, codeSize: number): bigint {
  return codeBase + BigInt(gateBlockOffset(codeSize));
}

function resolverModule(ctx: ProcessContext, m: Module): ResolverModule {
  return { name: m.name, path: m.path, loadBias: m.loadBias, elf: (): ElfFile | undefined => ctx.image(m)?.elf };
}

/** Why a recorded patch is not sanctioned although its code may be intact: who signed it. */
interface SignerProblem {
  severity: Finding['severity'];
  /** Completes "patch <id> ..." */
  reason: string;
}

/**
 * Why a recorded patch's signature cannot be believed at all (a forged or corrupted record), or
 * undefined when it is unsigned or its signature verifies (whoever the signer is).
 */
export function forgedSignature(p: RecordPatch): string | undefined {
  if (p.signing === undefined || p.content === undefined) return undefined;
  const s = p.signing;
  let sigOk = false;
  try {
    sigOk = s.algorithm === 'ed25519' && edVerify(null, s.message, publicKeyObject(s.publicKey), s.signature);
  } catch {
    sigOk = false;
  }
  if (!sigOk) return 'the recorded signature does not verify';
  const contentHash = s.message.subarray(DOMAIN_LENGTH + 2, DOMAIN_LENGTH + 2 + 32);
  return same(contentHash, sha256(p.content)) ? undefined : 'the recorded package content is not what was signed';
}

/** The signer problem of a recorded patch, or undefined when it is signed by a trusted key. */
function signerProblem(ctx: ProcessContext, p: RecordPatch): SignerProblem | { forged: string } | undefined {
  const forged = forgedSignature(p);
  if (forged !== undefined) return { forged };
  if (p.signing === undefined || p.content === undefined) {
    return { severity: 'high', reason: 'is unsigned (applied with --allow-unsigned): its provenance cannot be verified; remove it or apply a signed build' };
  }
  const s = p.signing;
  if (ctx.options.trust.keys.some((k) => same(k.publicKey, s.publicKey))) return undefined;
  const who = `${s.keyId}${s.signer ? ` (${s.signer})` : ''}`;
  if (ctx.options.trust.keys.length === 0) {
    return { severity: 'high', reason: `is signed by key ${who}, but no trusted signer is configured (${ctx.options.trust.origin.join(', ')}): trust it with --trust KEY.pub` };
  }
  return { severity: 'high', reason: `is signed by an untrusted signer ${who}: trust it with --trust KEY.pub if it is yours` };
}

/** Verifies one patch; returns problems (empty when it verifies) and what it sanctions. */
function verifyPatch(ctx: ProcessContext, p: RecordPatch, below: Map<bigint, Uint8Array>): { problems: Finding[]; sites: SanctionedSite[]; signer?: SignerProblem } {
  const problems: Finding[] = [];
  const f = (kind: Finding['kind'], severity: Finding['severity'], detail: string, extra: Partial<Finding> = {}) =>
    problems.push(makeFinding({ pid: ctx.pid, code: 10, kind, severity, module: p.module.path, detail: `patch ${p.id}: ${detail}`, patchId: p.id, ...extra }));
  // 1. Signature and signer.
  const signer = signerProblem(ctx, p);
  if (signer !== undefined && 'forged' in signer) {
    f('patch-signature', 'critical', signer.forged);
    return { problems, sites: [] };
  }
  if (signer !== undefined) return { problems, sites: [], signer };
  // 2. The plan, the module it targets and the signed code linked where the record says it lives.
  let plan: PatchPlan;
  try {
    plan = decodePackageContent(p.content!).plan;
  } catch (e) {
    f('patch-record', 'critical', `the signed content cannot be decoded: ${(e as Error).message}`);
    return { problems, sites: [] };
  }
  const mod = ctx.modules.find((m) => m.buildId === plan.target.buildId && m.loadBias === p.module.loadBias);
  if (mod === undefined) {
    f('patch-record', 'critical', `no module with build-id ${plan.target.buildId} at load bias 0x${p.module.loadBias.toString(16)}: the record does not describe this process`);
    return { problems, sites: [] };
  }
  let linked;
  try {
    const others = ctx.modules.filter((m) => m !== mod && m.kind !== 'vdso').map((m) => resolverModule(ctx, m));
    // Variables change as the patch runs: only where they are (which the code's relocations encode) is signed.
    linked = linkPatch(plan, layoutPatch(plan), p.code.start, p.data?.start ?? 0n, { loadBias: mod.loadBias, lookupSymbol: createSymbolLookup(resolverModule(ctx, mod), others) }, p.vars?.start ?? 0n);
  } catch (e) {
    f('patch-record', 'critical', `the signed code cannot be linked at the recorded arena: ${(e as Error).message}`);
    return { problems, sites: [] };
  }
  for (const [what, base, bytes] of [['code', linked.codeBase, linked.code], ['data', linked.dataBase, linked.data]] as const) {
    if (bytes.length === 0) continue;
    let mem: Uint8Array;
    try {
      mem = ctx.proc.readMemory(base, bytes.length);
    } catch {
      f('patch-modified', 'critical', `arena ${what} at 0x${base.toString(16)} is not mapped`);
      continue;
    }
    ctx.bytesVerified += bytes.length;
    if (!same(mem, bytes)) {
      let i = 0;
      while (mem[i] === bytes[i]) i++;
      f('patch-modified', 'critical', `arena ${what} differs from the signed ${what} linked at 0x${base.toString(16)} (first difference at +0x${i.toString(16)})`, {
        address: base + BigInt(i), expected: bytes.slice(i, i + 16), actual: mem.slice(i, i + 16),
        destination: ctx.describeAddress(base + BigInt(i)),
      });
    }
  }
  // Switched live: the gate block after the code is a pure function of the signed plan and the
  // recorded addresses; its flag is 1 exactly while the patch is applied.
  if (p.flag !== undefined) {
    const targets = plan.functions.map((fn, i) => ({ newCode: linked.functionAddresses[i]!, oldBody: siteGeometry(fn.entry, mod.loadBias, fn.name).switchAddress + 2n }));
    const expected = encodeGateBlock(p.flag, targets, p.state === 'applied' ? 1 : 0);
    let mem: Uint8Array | undefined;
    try {
      mem = ctx.proc.readMemory(p.flag, expected.length);
    } catch {
      mem = undefined;
    }
    ctx.bytesVerified += expected.length;
    if (p.flag !== gateBlockFor(linked.codeBase, linked.code.length) || mem === undefined || !same(mem, expected)) {
      const what = mem !== undefined && mem[0] !== expected[0] ? `its flag is ${mem[0]}, the patch is ${p.state}` : 'its gates are not the ones the signed plan implies';
      f('patch-modified', 'critical', `the gate block at 0x${p.flag.toString(16)} does not match: ${what}`, { address: p.flag, expected: expected.slice(0, 16), ...(mem ? { actual: mem.slice(0, 16) } : {}) });
    }
  }
  // 3. Sites: the signed entry plan's jumps on top of the signed original (or the patch below).
  const sites: SanctionedSite[] = [];
  plan.functions.forEach((fn, i) => {
    const g = siteGeometry(fn.entry, mod.loadBias, fn.name);
    const rec = p.sites.find((x) => x.address === g.address);
    if (rec === undefined) {
      f('patch-record', 'critical', `no record of the site of ${fn.name} at 0x${g.address.toString(16)}`);
      return;
    }
    const under = below.get(g.address) ?? fn.entry.expected;
    if (!same(rec.original, under)) {
      f('patch-modified', 'critical', `the recorded original bytes of ${fn.name} are not the signed ones`, { address: g.address, expected: under, actual: rec.original });
      return;
    }
    const expected = siteWrittenBytes(g, under, p.flag !== undefined ? gateAddress(p.flag, i) : linked.functionAddresses[i]!);
    if (!same(rec.written, expected)) {
      f('patch-modified', 'critical', `the recorded site bytes of ${fn.name} are not the jump the signed plan specifies`, { address: g.address, expected, actual: rec.written });
      return;
    }
    sites.push({ address: g.address, bytes: expected, function: fn.name });
  });
  return { problems, sites };
}

/** Reads and verifies the record of a process. Memoised per context. */
export function sanctionedState(ctx: ProcessContext): SanctionedState {
  return ctx.memo('sanctioned', () => {
    const st: SanctionedState = { record: null, findings: [], claimed: [], arenas: new Set() };
    if (!ctx.mappings.some((m) => m.path === RECORD_MAPS_PATH)) return st;
    let record: PatchRecord | null;
    try {
      record = readRecordFromMappings(ctx.pid, ctx.mappings);
    } catch (e) {
      st.findings.push(makeFinding({ pid: ctx.pid, code: 10, kind: 'patch-record', severity: 'critical', module: RECORD_MAPS_PATH, detail: `the hotpatch record cannot be read: ${(e as HotpatchError).message}` }));
      return st;
    }
    st.record = record;
    if (record === null) return st;
    // An apply/remove in progress: its sites are in flux; verify on the next cycle.
    if (record.transaction !== null) return st;
    const top = new Map<bigint, Uint8Array>();
    const siteNames = new Map<bigint, string>();
    const sitePatch = new Map<bigint, string>();
    const verifiedArenas: { start: bigint; end: bigint }[] = [];
    const unsanctioned: Array<{ start: bigint; end: bigint }> = [];
    for (const p of record.patches) {
      if (p.state !== 'applied') continue;
      const { problems, sites, signer } = verifyPatch(ctx, p, top);
      if (signer !== undefined) {
        // Intact but not sanctioned: one finding per site, named by the patched function. The
        // arena belongs to the patch and is not reported again as injected memory.
        for (const site of p.sites) st.findings.push(siteFinding(ctx, p, site, signer));
        if (p.sites.length > 0) {
          unsanctioned.push(p.code);
          if (p.data !== null) unsanctioned.push(p.data);
        }
      } else st.findings.push(...problems);
      if (problems.length === 0 && signer === undefined) {
        for (const s of sites) {
          top.set(s.address, s.bytes);
          st.claimed.push(s);
          siteNames.set(s.address, s.function);
          sitePatch.set(s.address, p.id);
        }
        verifiedArenas.push(p.code);
        if (p.data !== null) verifiedArenas.push(p.data);
      }
      if (signer !== undefined) {
        // The record owns these bytes (its signature verifies, only the signer is not trusted):
        // structure 0 must not judge (or restore) them against the file behind the engine's
        // back — that would leave the record saying "applied" over original code.
        for (const site of p.sites) st.claimed.push({ address: site.address, bytes: site.written, function: site.function });
      }
    }
    // Memory at each site must hold the top-most verified patch's bytes.
    for (const [address, bytes] of top) {
      let mem: Uint8Array;
      try {
        mem = ctx.proc.readMemory(address, bytes.length);
      } catch {
        continue;
      }
      ctx.bytesVerified += bytes.length;
      if (!same(mem, bytes)) {
        const mod = ctx.moduleAt(address);
        const hook = describeHook(mem, address);
        const finding = makeFinding({
          pid: ctx.pid, code: 10, kind: 'patch-site-modified', severity: 'critical', module: mod?.path ?? null, address,
          offset: mod ? address - mod.loadBias : null, symbol: `${siteNames.get(address)} (patch site)`, patchId: sitePatch.get(address)!,
          expected: bytes, actual: mem, detail: 'a patched site does not hold the bytes its signed patch specifies',
          instructions: { expected: describeHook(bytes, address).texts, actual: hook.texts },
        });
        if (hook.destination !== undefined) finding.destination = ctx.describeAddress(hook.destination);
        st.findings.push(finding);
      }
    }
    // Removed patches whose code threads may still run (retired) keep their signed code too; one
    // removed live keeps its padding's jump to its gate until it is freed (the entry is original).
    for (const p of record.patches) {
      if (p.state !== 'removed') continue;
      const v = verifyPatch(ctx, p, new Map());
      if (v.problems.length > 0 || v.signer !== undefined) continue;
      for (const site of p.sites) {
        if (site.gate === undefined || st.claimed.some((c) => c.address === site.address)) continue;
        const retiredBytes = new Uint8Array(site.original);
        retiredBytes.set(site.written.subarray(0, 5), 0);
        let mem: Uint8Array | undefined;
        try {
          mem = ctx.proc.readMemory(site.address, retiredBytes.length);
        } catch {
          mem = undefined;
        }
        if (mem !== undefined && (same(mem, retiredBytes) || same(mem, site.original))) st.claimed.push({ address: site.address, bytes: mem, function: site.function });
      }
      verifiedArenas.push(p.code);
      if (p.data !== null) verifiedArenas.push(p.data);
    }
    for (const a of record.arenas) {
      for (const m of ctx.mappings) {
        if (m.start < a.start || m.end > a.end) continue;
        const stray = m.protection.execute ? strayArenaByte(ctx, m.start, m.end, [...verifiedArenas, ...unsanctioned]) : undefined;
        if (stray === undefined) {
          st.arenas.add(m.start);
          continue;
        }
        const actual = ctx.proc.readMemory(stray, Number(m.end - stray < 16n ? m.end - stray : 16n));
        st.findings.push(makeFinding({
          pid: ctx.pid, code: 10, kind: 'patch-modified', severity: 'critical', module: RECORD_MAPS_PATH, address: stray, actual,
          detail: `the patch arena at 0x${m.start.toString(16)} holds code at 0x${stray.toString(16)} that no verified patch accounts for`,
          instructions: { expected: [], actual: describeHook(actual, stray).texts },
        }));
      }
    }
    return st;
  });
}

/** The one finding for a site of an intact patch that is not sanctioned (unsigned, untrusted signer). */
function siteFinding(ctx: ProcessContext, p: RecordPatch, site: RecordSite, signer: SignerProblem): Finding {
  const mod = ctx.moduleAt(site.address);
  return makeFinding({
    pid: ctx.pid, code: 10, kind: 'patch-untrusted', severity: signer.severity, module: mod?.path ?? p.module.path, address: site.address,
    offset: mod ? site.address - mod.loadBias : null, symbol: `${site.function} (patch site)`, patchId: p.id,
    detail: `patch ${p.id} ${signer.reason}`,
  });
}

/** Checks structure 10 for one process. */
export function checkSanctioned(ctx: ProcessContext): Finding[] {
  return sanctionedState(ctx).findings;
}

/**
 * The first byte of the executable arena mapping [start, end) outside every verified patch range
 * that is neither 0 (never used) nor int3 (freed code), or undefined when there is none.
 */
function strayArenaByte(ctx: ProcessContext, start: bigint, end: bigint, verified: ReadonlyArray<{ start: bigint; end: bigint }>): bigint | undefined {
  let bytes: Uint8Array;
  try {
    bytes = ctx.proc.readMemory(start, Number(end - start));
  } catch {
    return undefined; // unreadable: structure 5 reports what it can see
  }
  ctx.bytesVerified += bytes.length;
  const covered = verified.filter((v) => v.start < end && v.end > start).sort((x, y) => (x.start < y.start ? -1 : 1));
  let i = 0;
  for (const v of [...covered, { start: end, end }]) {
    const stop = Number((v.start > start ? v.start : start) - start);
    for (; i < stop; i++) if (bytes[i] !== 0 && bytes[i] !== 0xcc) return start + BigInt(i);
    i = Math.max(i, Number((v.end < end ? v.end : end) - start));
  }
  return undefined;
}
