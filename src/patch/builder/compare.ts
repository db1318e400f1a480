/**
 * Comparison of a function's two builds after normalisation. Names compare by key; read-only data
 * compares by content (named read-only objects through their pointer-normalised signature,
 * anonymous literals byte by byte up to the next boundary); jump tables compare entry by entry.
 */
import type { BuildImage, RefTarget } from './image.js';
import { targetString } from './image.js';
import type { CodeRef, NormalFunction } from './normalize.js';

/** Why two builds of a function differ (for reports). */
export interface Difference {
  reason: string;
  /** Offset in the new function where the difference was found, when known. */
  at?: number;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return Buffer.compare(a, b) === 0;
}

/** Compares references and functions across the old and the new build. */
export class Comparator {
  constructor(
    readonly old: BuildImage,
    readonly neu: BuildImage,
  ) {}

  #shifts: Set<bigint> | undefined;
  /**
   * How far things moved between the builds (old vaddr minus new vaddr): every function of both and
   * every section of both by name. An address field of unchanged code differs by one of these
   * (absolute) or by one minus the function's own shift (pc-relative).
   */
  #knownShifts(): Set<bigint> {
    if (this.#shifts) return this.#shifts;
    const set = new Set<bigint>();
    for (const f of this.old.functions) {
      const g = this.neu.functionsByKey.get(f.key);
      if (g) set.add(f.vaddr - g.vaddr);
    }
    for (const s of this.old.allocSections) {
      const t = this.neu.allocSections.find((q) => q.name === s.name);
      if (t) set.add(s.addr - t.addr);
    }
    this.#shifts = set;
    return set;
  }

  /**
   * For a function the decoder could not fully analyse (bytes that are not instructions, a branch
   * into an instruction): the raw bytes are equal but for 4-byte fields whose values differ by a
   * known address shift (absolute) or a known shift less the function's own (pc-relative).
   */
  #equalModuloShift(a: NormalFunction, b: NormalFunction): boolean {
    const x = a.bytes;
    const y = b.bytes;
    if (x.length !== y.length) return false;
    const shifts = this.#knownShifts();
    const own = a.fn.vaddr - b.fn.vaddr;
    const dx = new DataView(x.buffer, x.byteOffset, x.byteLength);
    const dy = new DataView(y.buffer, y.byteOffset, y.byteLength);
    for (let i = 0; i < x.length; i++) {
      if (x[i] === y[i]) continue;
      let explained = false;
      for (let j = Math.max(0, i - 3); j <= i && j + 4 <= x.length; j++) {
        const d = BigInt(dx.getInt32(j, true) - dy.getInt32(j, true));
        if (d !== 0n && (shifts.has(d) || shifts.has(d + own))) {
          explained = true;
          i = j + 3;
          break;
        }
      }
      if (!explained) return false;
    }
    return true;
  }

  /**
   * Same data at two anonymous addresses (string literal or constant). With the two builds of the
   * function that reads it (`fa`, `fb`), int32 words that differ are still the same when each
   * designates the same offset in that function relative to the data's own address (a code-relative
   * table that moved with the code: equal modulo the known address shift).
   */
  sameAnon(a: bigint, b: bigint, fa?: NormalFunction, fb?: NormalFunction): boolean {
    const sa = this.old.anonString(a);
    const sb = this.neu.anonString(b);
    if ((sa === undefined) !== (sb === undefined)) return false;
    if (sa && sb && !bytesEqual(sa, sb)) return false;
    let n = Math.min(this.old.anonExtent(a), this.neu.anonExtent(b));
    if (sa && sb) n = Math.max(n, sa.length);
    const ba = this.old.readSome(a, n);
    const bb = this.neu.readSome(b, n);
    if (bytesEqual(ba, bb)) return true;
    if (!fa || !fb || sa || ba.length !== bb.length || ba.length % 4 !== 0) return false;
    const da = new DataView(ba.buffer, ba.byteOffset, ba.byteLength);
    const db = new DataView(bb.buffer, bb.byteOffset, bb.byteLength);
    for (let off = 0; off < ba.length; off += 4) {
      const x = da.getInt32(off, true);
      const y = db.getInt32(off, true);
      if (x === y) continue;
      const ta = a + BigInt(x) - fa.fn.vaddr;
      const tb = b + BigInt(y) - fb.fn.vaddr;
      if (ta !== tb || ta < 0n || ta >= BigInt(fa.fn.size)) return false;
    }
    return true;
  }

  sameTarget(a: RefTarget, b: RefTarget, fa?: NormalFunction, fb?: NormalFunction): boolean {
    if (a.t !== b.t) return false;
    if (a.t === 'anon' && b.t === 'anon') return this.sameAnon(a.addr, b.addr, fa, fb);
    if (targetString(a) !== targetString(b)) return false;
    if (a.t === 'obj') {
      const oa = this.old.objectsByKey.get(a.key);
      const ob = this.neu.objectsByKey.get(a.key);
      if (!oa || !ob) return false;
      if (oa.kind === 'readonly' || oa.kind === 'relro') {
        if (oa.size !== ob.size) return false;
        return this.old.objectSignature(oa) === this.neu.objectSignature(ob);
      }
    }
    return true;
  }

  #sameRef(a: CodeRef, b: CodeRef, fa: NormalFunction, fb: NormalFunction): boolean {
    if (a.off !== b.off || a.size !== b.size || a.kind !== b.kind) return false;
    if ((a.table === undefined) !== (b.table === undefined)) return false;
    if (a.table !== undefined && b.table !== undefined) {
      const ta = fa.tables[a.table]!;
      const tb = fb.tables[b.table]!;
      if (ta.entrySize !== tb.entrySize || ta.targets.length !== tb.targets.length) return false;
      for (let i = 0; i < ta.targets.length; i++) {
        const x = ta.targets[i]! - fa.fn.vaddr;
        const y = tb.targets[i]! - fb.fn.vaddr;
        if (x >= 0n && x < BigInt(fa.fn.size)) {
          if (x !== y) return false;
        } else if (!this.sameTarget(this.old.symbolize(ta.targets[i]!), this.neu.symbolize(tb.targets[i]!))) return false;
      }
      return true;
    }
    // A reference to the function itself (non-PIC absolute label addresses): same offset.
    if (a.target.t === 'func' && a.target.key === fa.fn.key) return b.target.t === 'func' && b.target.key === fb.fn.key && a.target.off === b.target.off;
    return this.sameTarget(a.target, b.target, fa, fb);
  }

  /** Undefined when the two builds of the function are the same after normalisation. */
  difference(a: NormalFunction, b: NormalFunction): Difference | undefined {
    if (a.bytes.length !== b.bytes.length) return { reason: `size ${a.bytes.length} -> ${b.bytes.length}` };
    if (!bytesEqual(a.masked, b.masked)) {
      const unanalysed = a.invalidAt !== undefined || b.invalidAt !== undefined || a.midInstructionJump !== undefined || b.midInstructionJump !== undefined;
      if (unanalysed && this.#equalModuloShift(a, b)) return undefined;
      let i = 0;
      while (i < a.masked.length && a.masked[i] === b.masked[i]) i++;
      return { reason: `instructions differ at +0x${i.toString(16)}`, at: i };
    }
    if (a.refs.length !== b.refs.length) return { reason: 'different references' };
    for (let i = 0; i < a.refs.length; i++) {
      const ra = a.refs[i]!;
      const rb = b.refs[i]!;
      if (!this.#sameRef(ra, rb, a, b)) {
        const ta = targetString(ra.target);
        const tb = targetString(rb.target);
        const what = ra.table !== undefined ? 'its jump table changed' : ta === tb || ra.target.t === 'anon' ? `the data it reads at +0x${rb.off.toString(16)} changed (${tb})` : `reference at +0x${rb.off.toString(16)} changed: ${ta} -> ${tb}`;
        return { reason: what, at: rb.off };
      }
    }
    return undefined;
  }
}
