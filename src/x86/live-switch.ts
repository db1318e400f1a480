/**
 * Switching an entry by 1-byte writes while threads run (issue #10, item 1). Pure: bytes in, an
 * order of writes out.
 *
 * Each 1-byte store is atomic, so a thread sees the region [address, address + n) in one of the
 * states S0 = `from`, S1, ..., Sk = `to` (one written byte more each), and may be stopped between
 * any two of its instructions while the state changes under it. An order of writes is safe when
 * every state, entered at every position a thread may be at, runs as `from` or as `to`.
 *
 * Positions. A thread may sit at every instruction boundary of `from` and of `to` inside the
 * region (it got there in an earlier version, even from a previous switch), and at every position
 * a walk below passes through (it may stop there and meet a later state). Each position carries a
 * commitment: the version whose non-no-op instructions the thread already executed ('none' when
 * it executed only no-ops); a boundary of V after a non-no-op of V is committed to V.
 *
 * The walk from position p in state S decodes S (+ `following`) at p and follows fall-through
 * until it reaches the region end, an unconditional `jmp`, or a failure. It is safe when there is
 * a version V (= the commitment, if any) such that
 *  (a) every instruction is exactly V's instruction at that position (same start, same bytes, so
 *      same length and meaning), or a harmless 1-byte instruction — `nop` 90, `stc` F9, `clc` F8,
 *      `cmc` F5, `cld` FC — at a byte that V covers with a no-op (flags are dead at a function
 *      entry; the ABI requires DF = 0 at calls, so `cld` changes nothing; `std` is NOT harmless);
 *  (b) every non-no-op instruction of V that starts at or after p (up to V's first `jmp`) is
 *      executed as in (a), i.e. nothing of V's meaning is skipped;
 *  (c) the walk ends on a boundary of V: at V's `jmp` (its target, the padding holding the long
 *      jump, is valid before the switch by construction) or where V's last instruction ends
 *      (which may lie past the region when it extends into `following`).
 * Anything that lands mid-instruction of a non-no-op, decodes to another instruction, or runs a
 * non-no-op partly (a prefix of it decoding as something shorter) is unsafe.
 *
 * No-ops: `nop` in every form iced names so (90, 66 90, 0f 1f /0, ...) and `lea r64, [r64+0]`
 * (ms_hook_prologue's 8-byte `48 8d a4 24 00 00 00 00`, which cannot be split since its prefix is
 * not a harmless instruction). `8b ff` (`mov edi, edi`) is NOT a no-op in 64-bit mode: it clears
 * the upper half of rdi. Control transfers other than an unconditional direct `jmp` in `from` or
 * `to` are refused (their continuation is outside what this check can see).
 *
 * The region must lie in one 64-byte cache line: an instruction fetch that spans two lines may
 * read them at different moments and combine bytes of two states, which need not be a state of
 * the sequence checked here (Intel SDM Vol. 3A 8.1.3 guarantees nothing for cross-modifying code
 * without serialisation). A region crossing lines is refused and left to the freeze.
 */
import { decodeAt, fullRegisterName, iterateInstructions, type Insn } from './decode.js';

/** A 1-byte write: `byte` at `address + offset`. */
export interface LiveSwitchWrite {
  offset: number;
  byte: number;
}

export interface LiveSwitchInput {
  /** Run-time address of the region's first byte (an instruction boundary of both versions). */
  address: bigint;
  /** The bytes the region holds now. */
  from: Uint8Array;
  /** The bytes wanted; same length as `from`. */
  to: Uint8Array;
  /** The bytes right after the region (never written), to decode instructions that extend past it. */
  following: Uint8Array;
}

/**
 * `writes` in order; `states[i]` is the region after the first i writes (`states[0]` = from,
 * `states[writes.length]` = to).
 */
export type LiveSwitchPlan =
  | { ok: true; writes: LiveSwitchWrite[]; states: Uint8Array[] }
  | { ok: false; reason: string };

/** Cache line size of every x86-64 CPU in use (CPUID leaf 1 EBX[15:8] * 8 = 64). */
export const CACHE_LINE = 64;
/** Longest region planned: the orders searched are permutations of the differing bytes. */
export const MAX_LIVE_SWITCH_BYTES = 8;
/** At most this many differing bytes (6! = 720 orders). */
const MAX_DIFFERING = 6;

const HARMLESS = new Set([0x90, 0xf9, 0xf8, 0xf5, 0xfc]);
const LEGACY_PREFIXES = new Set([0x66, 0x67, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65]);

/** `lea r64, [r64]` (same register, no index, displacement 0, 64-bit operand): changes nothing. */
function isLeaNoop(i: Insn): boolean {
  const m = i.memory;
  if (i.mnemonic !== 'lea' || m === undefined || m.ripRelative || m.index !== undefined) return false;
  if (m.displacement !== 0n || m.base === undefined || fullRegisterName(m.base) !== m.base || i.dest !== m.base) return false;
  // 64-bit operand size: the last REX before the 8d opcode has W set.
  let rexW = false;
  for (const b of i.bytes) {
    if (b === 0x8d) return rexW;
    if ((b & 0xf0) === 0x40) rexW = (b & 0x08) !== 0;
    else if (LEGACY_PREFIXES.has(b)) rexW = false; // a REX not directly before the opcode is ignored
    else return false;
  }
  return false;
}

/** True for instructions with no architectural effect besides advancing rip. */
function isNoop(i: Insn): boolean {
  return !i.invalid && (i.isNop || isLeaNoop(i));
}

/** One version's instructions that start inside the region, by start offset. */
interface Version {
  name: 'from' | 'to';
  at: Map<number, Insn>;
  /** Start offsets, ascending. */
  starts: number[];
  /** For each region byte, the instruction covering it. */
  cover: Insn[];
  coverStart: number[];
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function decodeOne(buf: Uint8Array, offset: number, address: bigint): Insn {
  return decodeAt(buf.subarray(offset), address + BigInt(offset), { text: false, registers: true });
}

function decodeVersion(name: 'from' | 'to', bytes: Uint8Array, following: Uint8Array, address: bigint): Version | string {
  const buf = concat(bytes, following);
  const n = bytes.length;
  const v: Version = { name, at: new Map(), starts: [], cover: [], coverStart: [] };
  let q = 0;
  while (q < n) {
    const i = decodeOne(buf, q, address);
    if (i.truncated) return `${name}: the instruction at +${q} needs more bytes than \`following\` holds`;
    if (i.invalid) return `${name}: the bytes at +${q} do not decode`;
    if (i.flow !== 'next' && i.flow !== 'branch') return `${name}: +${q} holds a control transfer (${i.mnemonic}) other than jmp`;
    if (i.flow === 'branch' && i.branchTarget === undefined) return `${name}: +${q} holds an indirect jmp`;
    v.at.set(q, i);
    v.starts.push(q);
    for (let k = q; k < Math.min(n, q + i.length); k++) {
      v.cover[k] = i;
      v.coverStart[k] = q;
    }
    q += i.length;
  }
  return v;
}

type Commit = 'none' | 'from' | 'to';

/** Non-no-op instructions of V starting at >= p, up to and including its first jmp. */
function required(v: Version, p: number): number[] {
  const out: number[] = [];
  for (const s of v.starts) {
    if (s < p) continue;
    const i = v.at.get(s)!;
    if (!isNoop(i)) out.push(s);
    if (i.flow === 'branch') break;
  }
  return out;
}

/** The walk from p in state `buf` (region + following): instructions until the region end or a jmp. */
function walk(buf: Uint8Array, n: number, p: number, address: bigint): Array<{ q: number; insn: Insn }> {
  const out: Array<{ q: number; insn: Insn }> = [];
  let q = p;
  while (q < n) {
    const insn = decodeOne(buf, q, address);
    out.push({ q, insn });
    if (insn.invalid || insn.flow !== 'next') break;
    q += insn.length;
  }
  return out;
}

/**
 * Checks the walk against V (rules (a)-(c) of the module comment). Returns the positions inside the
 * region the walk passes through with the commitment a thread stopped there has, or undefined.
 */
function walkRunsAs(
  v: Version,
  steps: ReadonlyArray<{ q: number; insn: Insn }>,
  p: number,
  n: number,
  commit: Commit,
): Array<{ q: number; commit: Commit }> | undefined {
  const executed = new Set<number>();
  const passed: Array<{ q: number; commit: Commit }> = [];
  let c = commit;
  let end = p;
  for (const { q, insn } of steps) {
    if (q > p) passed.push({ q, commit: c });
    if (insn.invalid || insn.truncated) return undefined;
    const own = v.at.get(q);
    const same = own !== undefined && own.length === insn.length && own.bytes.every((b, k) => insn.bytes[k] === b);
    if (same) {
      if (!isNoop(own)) {
        executed.add(q);
        c = v.name;
      }
      end = q + own.length;
      if (own.flow === 'branch') {
        end = -1; // (c): ends at V's jmp
        break;
      }
      continue;
    }
    const covering = v.cover[q];
    if (insn.length !== 1 || !HARMLESS.has(insn.bytes[0]!) || covering === undefined || !isNoop(covering)) return undefined;
    end = q + 1;
  }
  // (c): a walk that fell through ends where V's last instruction ends.
  if (end !== -1) {
    const last = v.starts[v.starts.length - 1]!;
    if (end !== last + v.at.get(last)!.length || end < n) return undefined;
  }
  // (b): nothing of V's meaning from p on is skipped.
  for (const s of required(v, p)) if (!executed.has(s)) return undefined;
  return passed;
}

/** Checks one order's states from every reachable position; undefined when safe, else why not. */
function checkStates(states: readonly Uint8Array[], versions: readonly Version[], input: LiveSwitchInput): string | undefined {
  const n = input.from.length;
  const key = (q: number, c: Commit) => `${q}:${c}`;
  const positions = new Map<string, { q: number; commit: Commit }>();
  for (const v of versions) {
    let sawReal = false;
    for (const s of v.starts) {
      const c: Commit = sawReal ? v.name : 'none';
      positions.set(key(s, c), { q: s, commit: c });
      if (!isNoop(v.at.get(s)!)) sawReal = true;
    }
  }
  const bufs = states.map((s) => concat(s, input.following));
  const done = new Set<string>();
  for (let changed = true; changed; ) {
    changed = false;
    for (const [k, pos] of [...positions]) {
      if (done.has(k)) continue;
      done.add(k);
      for (let si = 0; si < bufs.length; si++) {
        const steps = walk(bufs[si]!, n, pos.q, input.address);
        if (steps.some((s) => s.insn.truncated)) return `state ${si} at +${pos.q}: an instruction needs more bytes than \`following\` holds`;
        let ok = false;
        for (const v of versions) {
          if (pos.commit !== 'none' && pos.commit !== v.name) continue;
          const passed = walkRunsAs(v, steps, pos.q, n, pos.commit);
          if (passed === undefined) continue;
          ok = true;
          for (const x of passed) {
            if (!positions.has(key(x.q, x.commit))) {
              positions.set(key(x.q, x.commit), x);
              changed = true;
            }
          }
        }
        if (!ok) {
          const hex = Buffer.from(states[si]!).toString('hex');
          return `state ${si} (${hex}) entered at +${pos.q} runs neither version`;
        }
      }
    }
  }
  return undefined;
}

function* permutations(items: readonly number[]): Generator<number[]> {
  if (items.length <= 1) {
    yield [...items];
    return;
  }
  for (let i = 0; i < items.length; i++) {
    const rest = [...items.slice(0, i), ...items.slice(i + 1)];
    for (const p of permutations(rest)) yield [items[i]!, ...p];
  }
}

/**
 * Finds an order of 1-byte writes turning `from` into `to` at `address` such that every
 * intermediate state is safe for a running thread at every position (module comment). Returns
 * ok:false with the reason when the input is unusable, the region crosses a cache line, or no
 * order is safe (the caller then falls back to freezing the threads).
 */
export function planLiveSwitch(input: LiveSwitchInput): LiveSwitchPlan {
  const { address, from, to, following } = input;
  if (typeof address !== 'bigint' || address < 0n || address > 0xffff_ffff_ffff_ffffn) {
    throw new TypeError('address: expected a 64-bit unsigned bigint');
  }
  for (const [label, v] of [['from', from], ['to', to], ['following', following]] as const) {
    if (!(v instanceof Uint8Array)) throw new TypeError(`${label}: expected Uint8Array`);
  }
  const n = from.length;
  if (n === 0) return { ok: false, reason: 'empty region: nothing to switch' };
  if (to.length !== n) return { ok: false, reason: `from has ${n} byte(s), to has ${to.length}` };
  if (n > MAX_LIVE_SWITCH_BYTES) return { ok: false, reason: `region of ${n} bytes: at most ${MAX_LIVE_SWITCH_BYTES} are planned` };
  if (address + BigInt(n) - 1n > 0xffff_ffff_ffff_ffffn) return { ok: false, reason: 'region wraps the address space' };
  const line = BigInt(CACHE_LINE);
  if (address / line !== (address + BigInt(n) - 1n) / line) {
    return { ok: false, reason: `region 0x${address.toString(16)}+${n} straddles a ${CACHE_LINE}-byte cache line` };
  }
  const differing: number[] = [];
  for (let i = 0; i < n; i++) if (from[i] !== to[i]) differing.push(i);
  if (differing.length > MAX_DIFFERING) return { ok: false, reason: `${differing.length} bytes differ: at most ${MAX_DIFFERING} are planned` };

  const versions: Version[] = [];
  for (const [name, bytes] of [['from', from], ['to', to]] as const) {
    const v = decodeVersion(name, bytes, following, address);
    if (typeof v === 'string') return { ok: false, reason: v };
    versions.push(v);
  }

  const tried: string[] = [];
  for (const order of permutations(differing)) {
    const states: Uint8Array[] = [from.slice()];
    let cur = from.slice();
    for (const off of order) {
      cur = cur.slice();
      cur[off] = to[off]!;
      states.push(cur);
    }
    const why = checkStates(states, versions, input);
    if (why === undefined) return { ok: true, writes: order.map((offset) => ({ offset, byte: to[offset]! })), states };
    if (tried.length < 4) tried.push(`offsets ${order.join(',')}: ${why}`);
  }
  return { ok: false, reason: `no order of 1-byte writes is safe (${tried.join('; ')})` };
}

/**
 * True when `from` is only no-op instructions ending exactly at its end, so code that replaces the
 * region (a gate) may continue at address + from.length instead of executing them.
 */
export function switchSkippable(from: Uint8Array): boolean {
  if (!(from instanceof Uint8Array)) throw new TypeError('from: expected Uint8Array');
  if (from.length === 0) return false;
  let end = 0;
  for (const i of iterateInstructions(from, 0n, { text: false, registers: true })) {
    if (i.invalid || i.truncated || !isNoop(i)) return false;
    end += i.length;
  }
  return end === from.length;
}
