/**
 * One `.eh_frame` section out of several patches' images. A symbol file has a single `.eh_frame`
 * (gdb reads one per objfile) at one address, while each patch's image sits in its own data arena.
 * The images are concatenated (an FDE's CIE pointer is relative to itself, so each image stays
 * consistent inside) and every pc-relative pointer (FDE pc_begin and LSDA, CIE personality) is
 * re-encoded for the place its field moved to; absolute pointers stay as they are.
 * Pointer encodings: LSB Core, "Exception Frames", DW_EH_PE_*.
 */
import { DW_EH_PE_pcrel, parseEhFrame, type EncodedPointer } from '../../elf/index.js';
import { HotpatchError } from '../../errors.js';

/** An `.eh_frame` image as it is in the target: its run-time address and bytes (terminator included or not). */
export interface EhFrameImage {
  address: bigint;
  bytes: Uint8Array;
}

/** Length of the image's records (up to, not including, the zero terminator). */
export function ehFrameLength(image: EhFrameImage): number {
  const { cies, fdes } = parseEhFrame(image.bytes, image.address);
  let end = 0;
  for (const r of [...cies, ...fdes]) end = Math.max(end, r.offset + r.size);
  return end;
}

/** Writes pointer `p` (moved to run-time address `at`) in its encoding's format; false when it does not fit. */
function rewrite(dv: DataView, fieldOffset: number, p: EncodedPointer, at: bigint): boolean {
  if (p.value === 0n || (p.encoding & 0x70) !== DW_EH_PE_pcrel) return true;
  const raw = BigInt.asIntN(64, p.value - at);
  const format = p.encoding & 0x0f;
  if (p.size === 4) {
    // DW_EH_PE_udata4 (0x03) or sdata4 (0x0b): the difference must fit the field.
    if (format === 0x0b ? raw < -(1n << 31n) || raw >= 1n << 31n : raw < 0n || raw >= 1n << 32n) return false;
    dv.setUint32(fieldOffset, Number(BigInt.asUintN(32, raw)), true);
    return true;
  }
  if (p.size === 8) {
    dv.setBigUint64(fieldOffset, BigInt.asUintN(64, raw), true);
    return true;
  }
  return false;
}

/**
 * Concatenates `images` into one `.eh_frame` placed at the first image's address, followed by a
 * zero terminator. Throws HotpatchError DEBUG_EH_FRAME when a pointer cannot be re-encoded.
 */
export function mergeEhFrames(images: readonly EhFrameImage[]): EhFrameImage | undefined {
  if (images.length === 0) return undefined;
  const base = images[0]!.address;
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const img of images) {
    const { cies, fdes } = parseEhFrame(img.bytes, img.address);
    const len = ehFrameLength(img);
    const copy = img.bytes.slice(0, len);
    const dv = new DataView(copy.buffer);
    const moved = base + BigInt(at);
    const pointers = [...cies.flatMap((c) => (c.personality ? [c.personality] : [])), ...fdes.flatMap((f) => [f.pcBegin, ...(f.lsda ? [f.lsda] : [])])];
    for (const p of pointers) {
      if (!rewrite(dv, p.offset, p, moved + BigInt(p.offset))) {
        throw new HotpatchError('DEBUG_EH_FRAME', `cannot merge the .eh_frame at 0x${img.address.toString(16)}: a pointer (encoding 0x${p.encoding.toString(16)}) does not fit at its new place`);
      }
    }
    parts.push(copy);
    at += len;
  }
  const out = new Uint8Array(at + 4); // + the zero-length terminator
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return { address: base, bytes: out };
}
