/**
 * Reactions to confirmed findings: log, stop (SIGSTOP), kill (SIGKILL), restore.
 *
 * `restore` never makes the code disagree with hotpatch's in-process record:
 * - module code (structure 0) and import slots (structure 3): the expected bytes are written back
 *   (freeze + writeMemoryChecked: only if memory still holds the bytes the finding saw), unless
 *   the bytes belong to a site the record describes (and the record's signature is not forged) —
 *   those only change through the engine;
 * - a sanctioned patch's site that lost its signed jump (structure 10 `patch-site-modified`): the
 *   engine writes the recorded jump back (under the process lock, with its thread checks);
 * - a site of an intact patch that is not sanctioned (`patch-untrusted`): the engine removes the
 *   patch — but only when trusted signers are configured: with none, no patch can be judged, and
 *   undoing a correctly signed fix because trust is missing would bring the bug back;
 * - everything else falls back to `log`.
 */
import { repairPatch, removePatch, readRecordFromMappings, type PatchRecord } from '../patch/engine/index.js';
import { freezeProcess } from '../process/index.js';
import { readMappings } from '../process/control/procfs.js';
import { forgedSignature } from './checks/sanctioned.js';
import type { Finding } from './finding.js';
import type { GuardAction } from './policy.js';
import type { GuardState } from './state.js';

/** What an action did. */
export interface ActionOutcome {
  action: GuardAction;
  /** What was really done (restore may fall back to log). */
  performed: GuardAction;
  ok: boolean;
  detail: string;
}

/** What an action needs to know besides the finding. */
export interface ActionContext {
  state: GuardState;
  /** Whether any trusted signer is configured (else unsanctioned patches are never removed). */
  trustConfigured: boolean;
  /** How long the engine may retry while threads are in the way (ms). */
  timeoutMs?: number;
  /** How long a target may take to stop for a byte restore (ms, default 2000). */
  freezeTimeoutMs?: number;
}

/** Kinds of findings `restore` can repair by writing the expected bytes back. */
const RESTORABLE = new Set(['inline-hook', 'modified', 'breakpoint', 'got-hook']);

/** Whether `restore` can repair this finding. */
export function canRestore(f: Finding): boolean {
  if (f.code === 10) return (f.kind === 'patch-site-modified' || f.kind === 'patch-untrusted') && f.patchId !== undefined;
  const kindOk = (f.code === 0 || f.code === 3) && RESTORABLE.has(f.kind);
  return kindOk && f.address !== null && f.expected !== null && f.actual !== null && f.expected.length === f.actual.length && f.expected.length > 0;
}

function readRecord(pid: number): PatchRecord | null {
  return readRecordFromMappings(pid, readMappings(pid));
}

/**
 * The recorded site that [address, end) overlaps, of a patch whose record is believable (unsigned,
 * or its signature verifies: a forged record owns nothing), if any.
 */
function recordedSiteIn(record: PatchRecord | null, address: bigint, end: bigint): { patchId: string; function: string } | undefined {
  for (const p of record?.patches ?? []) {
    if (forgedSignature(p) !== undefined) continue;
    for (const s of p.sites) {
      if (s.address < end && address < s.address + BigInt(s.original.length)) return { patchId: p.id, function: s.function };
    }
  }
  return undefined;
}

/** Repairs a structure-10 finding through the engine (see the module comment). */
async function restorePatchFinding(f: Finding, ctx: ActionContext): Promise<ActionOutcome> {
  const base = { action: 'restore' as const, performed: 'restore' as const };
  const id = f.patchId!;
  const timeoutMs = ctx.timeoutMs ?? 5000;
  if (f.kind === 'patch-untrusted') {
    if (!ctx.trustConfigured) {
      return { action: 'restore', performed: 'log', ok: false, detail: `no trusted signer is configured: patch ${id} is left applied (configure --trust, or remove it with \`hotpatch remove ${id} --pid ${f.pid}\`)` };
    }
    const r = await removePatch(f.pid, id, { timeoutMs });
    state(ctx, f, `removed unsanctioned patch ${id}`);
    return { ...base, ok: true, detail: `removed patch ${id} through the engine (pause ${Math.round(r.pauseMicros)} µs${r.codeFreed ? '' : '; its code is retired until no thread uses it'})` };
  }
  const r = await repairPatch(f.pid, id, { timeoutMs });
  state(ctx, f, `rewrote the signed jump(s) of patch ${id}`);
  return { ...base, ok: true, detail: `wrote the signed jump of patch ${id} back at ${r.sitesRepaired} site(s) through the engine (pause ${Math.round(r.pauseMicros)} µs)` };
}

function state(ctx: ActionContext, f: Finding, what: string): void {
  ctx.state.recordRestore({
    time: new Date().toISOString(), pid: f.pid, code: f.code, module: f.module, address: f.address !== null ? `0x${f.address.toString(16)}` : '',
    bytes: what, previous: f.actual !== null ? Buffer.from(f.actual).toString('hex') : '',
  });
}

/**
 * Writes a finding's expected bytes back (or repairs a patch through the engine). The process is
 * frozen for a byte write; a thread whose instruction pointer is inside the bytes makes it retry
 * (thaw, wait, up to `attempts` times).
 */
export async function restoreFinding(f: Finding, ctx: ActionContext, attempts = 20): Promise<ActionOutcome> {
  const base = { action: 'restore' as const, performed: 'restore' as const };
  if (!canRestore(f)) return { action: 'restore', performed: 'log', ok: false, detail: `structure ${f.code} (${f.kind}) cannot be restored by writing bytes; logged only` };
  if (f.code === 10) return restorePatchFinding(f, ctx);
  const address = f.address!;
  const end = address + BigInt(f.expected!.length);
  for (let i = 0; i < attempts; i++) {
    const frozen = freezeProcess(f.pid, { timeoutMs: ctx.freezeTimeoutMs ?? 2000 });
    let busy = false;
    try {
      // Read while frozen: no hotpatch operation can be half-way (it holds every thread too).
      const site = recordedSiteIn(readRecord(f.pid), address, end);
      if (site !== undefined) {
        return { action: 'restore', performed: 'log', ok: false, detail: `0x${address.toString(16)} is a site of patch ${site.patchId} (${site.function}): only the engine changes it (\`hotpatch remove\` / \`hotpatch recover\`); not restored` };
      }
      busy = frozen.threads.some((t) => t.regs.rip > address && t.regs.rip < end);
      if (!busy) {
        frozen.writeMemoryChecked(address, f.actual!, f.expected!);
      }
    } finally {
      frozen.thaw();
    }
    if (!busy) {
      ctx.state.recordRestore({
        time: new Date().toISOString(), pid: f.pid, code: f.code, module: f.module, address: `0x${address.toString(16)}`,
        bytes: Buffer.from(f.expected!).toString('hex'), previous: Buffer.from(f.actual!).toString('hex'),
      });
      return { ...base, ok: true, detail: `wrote ${f.expected!.length} expected byte(s) back at 0x${address.toString(16)}` };
    }
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 40));
  }
  return { ...base, ok: false, detail: `a thread kept executing inside 0x${address.toString(16)}-0x${end.toString(16)}; not restored` };
}

/** Performs `action` for a confirmed finding. Never throws: failures are in the outcome. */
export async function performAction(action: GuardAction, f: Finding, ctx: ActionContext): Promise<ActionOutcome> {
  try {
    switch (action) {
      case 'log':
        return { action, performed: 'log', ok: true, detail: 'logged' };
      case 'stop':
        process.kill(f.pid, 'SIGSTOP');
        return { action, performed: 'stop', ok: true, detail: `sent SIGSTOP to ${f.pid}` };
      case 'kill':
        process.kill(f.pid, 'SIGKILL');
        return { action, performed: 'kill', ok: true, detail: `sent SIGKILL to ${f.pid}` };
      case 'restore':
        return await restoreFinding(f, ctx);
    }
  } catch (e) {
    return { action, performed: action, ok: false, detail: (e as Error).message };
  }
}
