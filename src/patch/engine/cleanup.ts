/**
 * Freeing patch code that is no longer reachable (retired code) and unmapping what an operation
 * mapped when it fails, so a refused or failed apply leaves no new mapping behind.
 */
import { hijack, rollingCheck } from './control.js';
import { JMP_REL32_SIZE, JMP_SHORT_SIZE } from '../../x86/index.js';
import { bytesEqual } from './bytes.js';
import { recordedGeometry } from './sites.js';
import { siteStack } from './stack.js';
import { unregisterUnwind } from './unwind.js';
import { FOLLOWING_BYTES, setFlag, switchBytes, switchLive } from './live.js';
import { memoryWriter, type MemoryWriter } from './memory.js';
import type { AddressRange } from '../../process/index.js';
import type { PatchRecord, RecordArena, RecordPatch, RecordSite } from './record.js';
import { privatizeSharers } from './private-record.js';
import { releaseIfEmpty, unmapRecord } from './release.js';
import type { Session } from './session.js';

const INT3 = 0xcc;

/**
 * What of removed patches threads may still use: their code (gates included) and, for a patch
 * removed live, the paddings whose jump still leads to its gates. A patch may give several
 * entries; it is freed when none is in use.
 */
export function retiredRanges(record: { patches: RecordPatch[] }): RetiredRange[] {
  const out: RetiredRange[] = [];
  for (const p of record.patches) {
    if (p.state !== 'removed') continue;
    out.push({ patch: p, range: p.code });
    for (const site of p.sites) if (site.gate !== undefined) out.push({ patch: p, range: { start: site.address, end: site.address + BigInt(JMP_REL32_SIZE) }, padding: site });
  }
  return out;
}

/** A range of a retired patch; `padding`: the site whose padding jump it is. */
export interface RetiredRange {
  patch: RecordPatch;
  range: AddressRange;
  padding?: RecordSite;
}

/** Gives a padding that still holds `site`'s jump its original bytes, unless a live patch owns the site. */
function resetPadding(mem: MemoryWriter, record: PatchRecord, site: RecordSite): void {
  if (siteStack(record, site.address).length > 0) return;
  const jump = site.written.subarray(0, JMP_REL32_SIZE);
  if (bytesEqual(mem.read(site.address, JMP_REL32_SIZE), jump)) mem.writeVerified(site.address, site.original.slice(0, JMP_REL32_SIZE));
}

/**
 * Retired patches a `lazy` reclaim leaves for a later check rather than stop a running thread to
 * free them now: they cost only arena space, and a re-apply of the same patch revives them
 * (./revive.ts) without any stop.
 */
export const RETIRED_PATCHES_KEPT = 4;

/**
 * How a reclaim treats threads on their CPU (threads off it are checked through /proc, never
 * stopped): `stop` stops them one at a time; `lazy` looks again for LAZY_PATIENCE_MS and leaves
 * those still running unchecked, so that anything they might use stays retired, as long as at most
 * RETIRED_PATCHES_KEPT patches are retired (more: `stop`).
 */
export type ReclaimMode = 'stop' | 'lazy';

/** How long a `lazy` reclaim keeps looking at running threads for a moment at rest (ms). */
export const LAZY_PATIENCE_MS = 20;

/**
 * Frees the retired patches no thread can use any more, checking the threads one at a time
 * (./control.ts rollingCheck: nothing leads into retired code, so a thread found outside it stays
 * outside). Returns how many were freed.
 */
export async function reclaimRetired(s: Session, timeoutMs: number, mode: ReclaimMode = 'stop'): Promise<number> {
  const retired = retiredRanges(s.record);
  if (retired.length === 0 || !s.proc.isAlive()) return 0;
  const lazy = mode === 'lazy' && new Set(retired.map((r) => r.patch)).size <= RETIRED_PATCHES_KEPT;
  const check = rollingCheck(s.pid, retired.map((r) => r.range), timeoutMs, lazy ? { stopRunning: false, patienceMs: LAZY_PATIENCE_MS } : {});
  // Threads created faster than they could be checked: nothing is known to be free.
  const inUse = check.threadsUnchecked > 0 ? retired.map(() => true) : check.inUse;
  return freeUnusedRetired(s, retired, inUse, timeoutMs);
}

/**
 * Drops from the record the retired patches no thread used during the last freeze, after filling
 * their code with int3 (a stale jump into freed code then traps instead of running garbage), and
 * releases the arenas and the record when no patch is left (./release.ts). Processes forked since
 * that still share the record get their own copy first (they may still run the dropped code); when
 * one cannot be done, nothing is dropped (a later operation frees it).
 */
export async function freeUnusedRetired(s: Session, retired: readonly RetiredRange[], inUse: readonly boolean[], timeoutMs = 5000): Promise<number> {
  // A padding no thread is in is reset even while its patch's code is still in use (or only looks
  // so to the conservative stack scan): the function can then be patched again at once.
  const paddings = retired.filter((r, i) => r.padding !== undefined && inUse[i] === false);
  if (paddings.length > 0 && s.proc.isAlive()) {
    const mem = memoryWriter(s.pid);
    try {
      for (const r of paddings) resetPadding(mem, s.record, r.padding!);
    } finally {
      mem.close();
    }
  }
  const busy = new Set(retired.filter((_, i) => inUse[i] !== false).map((r) => r.patch));
  const candidates = [...new Set(retired.map((r) => r.patch))].filter((p) => !busy.has(p));
  if (candidates.length === 0 || !s.store || !(await privatizeSharers(s))) return 0;
  // The unwinder keeps knowing the code until it is freed: a thread still inside retired C++ code
  // may throw. One that cannot be unregistered now (unwinder busy) stays retired.
  const free: RecordPatch[] = [];
  for (const p of candidates) {
    try {
      await unregisterUnwind(s, p, timeoutMs);
      free.push(p);
    } catch {
      /* freed by a later operation */
    }
  }
  if (free.length === 0) return 0;
  const mem = memoryWriter(s.pid);
  try {
    for (const p of free) {
      mem.writeVerified(p.code.start, new Uint8Array(Number(p.code.end - p.code.start)).fill(INT3));
      if (p.data) mem.writeVerified(p.data.start, new Uint8Array(Number(p.data.end - p.data.start)));
      if (p.vars) mem.writeVerified(p.vars.start, new Uint8Array(Number(p.vars.end - p.vars.start)));
    }
  } finally {
    mem.close();
  }
  s.record = s.store.write({ ...s.record, patches: s.record.patches.filter((p) => !free.includes(p)) });
  releaseIfEmpty(s);
  return free.length;
}

/**
 * Unmaps arenas (and the record) that the failed operation itself created and nothing uses.
 * Best effort: needs one more short freeze.
 */
export async function unmapFresh(s: Session, fresh: { record: boolean; arenas: RecordArena[] }): Promise<void> {
  const arenas = fresh.arenas.filter((a) => !s.record.patches.some((p) => [p.code, p.data, p.vars].some((r) => r && r.start < a.end && a.start < r.end)));
  const dropRecord = fresh.record && s.record.patches.length === 0 && s.record.arenas.every((a) => arenas.includes(a));
  if (arenas.length === 0 && !dropRecord) return;
  // A process that died meanwhile has nothing left to unmap (and must not get injected calls).
  if (!s.proc.isAlive() || !(await privatizeSharers(s))) return;
  // Nothing uses these mappings: one hijacked thread unmaps them while the others run.
  const frozen = hijack(s.pid);
  try {
    for (const a of arenas) frozen.unmap(a.start, Number(a.end - a.start));
    if (s.store && !dropRecord) s.record = s.store.write({ ...s.record, arenas: s.record.arenas.filter((a) => !arenas.includes(a)) });
    if (dropRecord) unmapRecord(s, frozen);
  } finally {
    frozen.thaw();
  }
}

/**
 * Undoes a live switch that failed half-way: flag clear first (every gate back to the old body),
 * entries back byte by byte, then the patch is retired and reclaimed like a removed one (its
 * paddings are reset once no thread can be in them).
 */
export async function undoLiveApply(s: Session, entry: RecordPatch, timeoutMs: number): Promise<void> {
  if (!s.proc.isAlive() || !s.store || entry.flag === undefined) return;
  const mem = memoryWriter(s.pid);
  try {
    setFlag(mem, entry.flag, 0);
    for (const site of entry.sites) {
      const g = recordedGeometry(site);
      const now = mem.read(site.switchAddress, JMP_SHORT_SIZE);
      switchLive(mem, site.switchAddress, now, switchBytes(g, site.original), mem.read(site.switchAddress + 2n, FOLLOWING_BYTES));
    }
  } finally {
    mem.close();
  }
  // The unwind information stays registered until the reclaim frees the code (freeUnusedRetired).
  const retired: RecordPatch = { ...entry, state: 'removed', retired: true, sites: entry.sites.map((x) => ({ ...x, state: 'removed' })) };
  s.record = s.store.write({ ...s.record, transaction: null, patches: s.record.patches.map((p) => (p === entry ? retired : p)) });
  await reclaimRetired(s, timeoutMs, 'lazy');
}
