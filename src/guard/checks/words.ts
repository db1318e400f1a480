/** 64-bit words of a process's memory: decoding, encoding and batched reads shared by the checks. */
import type { ProcessContext } from '../context.js';

/** The little-endian 64-bit word at `off` of `b`. */
export function u64(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset + off, 8).getBigUint64(0, true);
}

/** `v` as 8 little-endian bytes. */
export function le64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}

/** Words at `bias + vaddr` for sorted `vaddrs`, read in runs of at most 64 KiB. */
export function readWords(ctx: ProcessContext, bias: bigint, vaddrs: readonly bigint[]): Map<bigint, bigint> {
  const out = new Map<bigint, bigint>();
  let i = 0;
  while (i < vaddrs.length) {
    const start = vaddrs[i]!;
    let j = i;
    while (j + 1 < vaddrs.length && vaddrs[j + 1]! - start < 65536n) j++;
    const len = Number(vaddrs[j]! - start) + 8;
    let buf: Uint8Array;
    try {
      buf = ctx.proc.readMemoryPartial(bias + start, len);
    } catch {
      buf = new Uint8Array(0);
    }
    for (let k = i; k <= j; k++) {
      const off = Number(vaddrs[k]! - start);
      if (off + 8 <= buf.length) out.set(vaddrs[k]!, u64(buf, off));
    }
    ctx.bytesVerified += buf.length;
    i = j + 1;
  }
  return out;
}
