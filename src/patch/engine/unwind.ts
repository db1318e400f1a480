/**
 * Registering the new code's unwind information (PatchPlan.unwind, an `.eh_frame` image in the
 * patch's data) with the target's unwinder, so that a C++ exception thrown in or passing through
 * patched code is caught where the old code would catch it; unregistering it on remove.
 *
 * How: a remote call of libgcc's `__register_frame_info(begin, ob)` with `ob` (libgcc's
 * `struct object`) in a read-write page we map, and of `__deregister_frame_info(begin)` on remove.
 * Why not make the unwinder find the FDEs without a call: `_Unwind_Find_FDE` (gcc 12,
 * unwind-dw2-fde-dip.c) looks in the registered objects, then walks `dl_iterate_phdr`'s module list
 * for a PT_GNU_EH_FRAME covering the pc. The arena is in no module, and faking one means editing
 * ld.so's link_map list (which the guard rightly reports as a hidden module) or writing libgcc's
 * static, unexported `unseen_objects` list, whose address only libgcc's own code knows. The
 * registration API is public, stable since gcc 3, and the way JITs do it.
 *
 * The call is safe because (unwind-dw2-fde.c, gcc 12):
 * - `__register_frame_info` with a caller-provided object does not allocate; it only takes
 *   `object_mutex` to push the object on `unseen_objects`;
 * - `__deregister_frame_info` frees the object's sorted FDE vector (malloc'd when an exception
 *   first looked the object up): we take that path away first by turning the object back into an
 *   unsorted one (u.single = begin, sorted bit clear), so it only unlinks it; the vector (16 + 8 per
 *   FDE bytes) is leaked, a malloc call in a frozen process is not risked;
 * - registration runs in one hijacked thread while the others run (issue #10): the list it changes
 *   is only touched under `object_mutex`, which the call takes like any caller — a thread holding
 *   it makes the call wait, not fail. What must not happen is the hijacked thread itself being
 *   inside libgcc (holding the mutex, or mid-unwind): the call runs only when its rip and stack
 *   point nowhere into libgcc's code; else another try, and a whole-process freeze as the fallback;
 * - deregistration rewrites the object's fields without the mutex, so it runs in a freeze, and only
 *   when no thread's rip or stack (rsp to the end of its mapping) points into libgcc's code: no
 *   thread holds the mutex or is inside the unwinder at all; else thaw, back off and retry until
 *   the timeout.
 * Everything is recorded first: `RecordPatch.unwind` is written before the registration call and
 * cleared after the deregistration, and a failed registration unmaps the page it mapped.
 */
import { HotpatchError } from '../../errors.js';
import type { AddressRange, Module } from '../../process/index.js';
import type { SymbolLookup } from '../linker/index.js';
import type { PatchPlan } from '../plan.js';
import { freeze, hijack, type Frozen } from './control.js';
import type { RecordPatch, RecordUnwind } from './record.js';
import type { Session } from './session.js';

/** The page holding `struct object`. */
const OBJECT_PAGE = 4096;
/** struct object (libgcc unwind-dw2-fde.h, LP64): pc_begin, tbase, dbase, u (single/sort), s (bit 0: sorted), next. */
const OBJECT_SIZE = 48;
const OBJECT_U = 24;
const OBJECT_S = 32;
const S_SORTED = 1n;

/** The unwinder of the target: its registration functions and its code. */
interface Unwinder {
  register: bigint;
  deregister: bigint;
  text: AddressRange[];
  path: string;
}

/** The unwinder whose `__deregister_frame_info` is at `deregister` (and `__register_frame_info` at `register`). */
function unwinderAt(modules: readonly Module[], register: bigint, deregister: bigint): Unwinder | undefined {
  const m = modules.find((x) => x.base <= register && register < x.end);
  if (!m || deregister < m.base || deregister >= m.end) return undefined;
  return { register, deregister, path: m.path, text: m.mappings.filter((x) => x.protection.execute).map((x) => ({ start: x.start, end: x.end })) };
}

/**
 * Whether libgcc ran the registration of the object at `page`: __register_frame_info sets
 * pc_begin to -1 before linking the object, init_object later to the lowest pc; we map it zeroed.
 */
function registered(frozen: Frozen, page: bigint): boolean {
  return new DataView(frozen.read(page, 8).buffer).getBigUint64(0, true) !== 0n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

/**
 * Stops the target — one hijacked thread (`stop: 'one'`) or every thread — when no stopped thread
 * is inside the unwinder and runs `work`; retries until `timeoutMs`, a hijack 3 times before it
 * falls back to freezing every thread. Returns the sum of the pauses (µs).
 */
async function whileUnwinderIdle(
  pid: number,
  u: Unwinder,
  what: 'register' | 'unregister',
  timeoutMs: number,
  stop: 'one' | 'all',
  work: (f: Frozen) => void,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let paused = 0;
  for (let delay = 1, attempt = 0; ; delay = Math.min(delay * 2, 50), attempt++) {
    const frozen = stop === 'one' && attempt < 3 ? hijack(pid, timeoutMs) : freeze(pid, timeoutMs);
    let busy: string | undefined;
    try {
      const use = frozen.stoppedThreadsUsing(u.text)[0];
      if (use === undefined) work(frozen);
      else busy = `thread ${use.tid} is inside ${u.path} (${use.how} 0x${use.address.toString(16)})`;
    } finally {
      paused += frozen.thaw();
    }
    if (busy === undefined) return paused;
    if (Date.now() + delay > deadline) {
      throw new HotpatchError('UNWIND_BUSY', `cannot ${what} the patch's unwind information in process ${pid}: ${busy} for ${timeoutMs} ms (an exception storm?); retry, or raise --timeout`);
    }
    await sleep(delay);
  }
}

/**
 * Registers the plan's unwind information for `entry` (already in the record, code and data
 * written): sets entry.unwind and writes the record before the call. No-op without unwind
 * information or without an unwinder in the target (a C program: nothing there can throw).
 * Returns the pause it caused (µs).
 */
export async function registerUnwind(
  s: Session,
  entry: RecordPatch,
  plan: PatchPlan,
  dataAddresses: readonly bigint[],
  env: { modules: readonly Module[]; lookup: SymbolLookup; timeoutMs: number },
): Promise<number> {
  if (plan.unwind === undefined || !s.store) return 0;
  const register = env.lookup({ kind: 'symbol', name: '__register_frame_info' });
  const deregister = env.lookup({ kind: 'symbol', name: '__deregister_frame_info' });
  const u = register !== undefined && deregister !== undefined ? unwinderAt(env.modules, register, deregister) : undefined;
  if (!u) return 0;
  const store = s.store;
  const ehFrame = dataAddresses[plan.unwind.ehFrame]!;
  return whileUnwinderIdle(s.pid, u, 'register', env.timeoutMs, 'one', (frozen) => {
    const page = frozen.mapWritable(OBJECT_PAGE);
    const unwind: RecordUnwind = { ehFrame, object: { start: page, end: page + BigInt(OBJECT_PAGE) }, deregister: u.deregister };
    try {
      entry.unwind = unwind;
      s.record = store.write({ ...s.record });
      frozen.write(page, new Uint8Array(OBJECT_SIZE));
      frozen.call(u.register, [ehFrame, page]);
    } catch (e) {
      // Never ran: forget the page. Ran (even abandoned): keep it recorded; the caller unregisters.
      try {
        if (!registered(frozen, page)) {
          delete entry.unwind;
          s.record = store.write({ ...s.record });
          frozen.unmap(page, OBJECT_PAGE);
        }
      } catch {
        /* the original error is what the user needs */
      }
      throw e;
    }
  });
}

/** Unregisters `patch`'s unwind information (if registered), frees its object page and clears patch.unwind in the record. */
export async function unregisterUnwind(s: Session, patch: RecordPatch, timeoutMs: number): Promise<void> {
  const unwind = patch.unwind;
  if (unwind === undefined || !s.store) return;
  const store = s.store;
  const u = unwinderAt(s.proc.enumerateModules(), unwind.deregister, unwind.deregister);
  if (!u) throw new HotpatchError('UNWIND_MISSING', `process ${s.pid} no longer has the unwinder its patch registered with (__deregister_frame_info); nothing was changed`);
  await whileUnwinderIdle(s.pid, u, 'unregister', timeoutMs, 'all', (frozen) => {
    // Not registered when a crash came before the call: then there is nothing to unlink (and libgcc
    // aborts the process when asked to deregister an object it does not know).
    if (registered(frozen, unwind.object.start)) {
      const ob = frozen.read(unwind.object.start, OBJECT_SIZE);
      const dv = new DataView(ob.buffer, ob.byteOffset, ob.byteLength);
      const bits = dv.getBigUint64(OBJECT_S, true);
      if ((bits & S_SORTED) !== 0n) {
        // Sorted by a lookup: make it unsorted again so deregistration unlinks it without free().
        const orig = new DataView(frozen.read(dv.getBigUint64(OBJECT_U, true), 8).buffer).getBigUint64(0, true);
        if (orig !== unwind.ehFrame) throw new HotpatchError('UNWIND_CORRUPT', `the unwinder's object for the patch in process ${s.pid} does not describe its .eh_frame; nothing was changed`);
        dv.setBigUint64(OBJECT_U, unwind.ehFrame, true);
        dv.setBigUint64(OBJECT_S, bits & ~S_SORTED, true);
        frozen.write(unwind.object.start, ob);
      }
      frozen.call(u.deregister, [unwind.ehFrame]);
    }
    delete patch.unwind;
    s.record = store.write({ ...s.record });
    frozen.unmap(unwind.object.start, Number(unwind.object.end - unwind.object.start));
  });
}
