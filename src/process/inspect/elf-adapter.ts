/**
 * TEMPORARY adapter: the project's ELF reader (src/elf, parseElf) had not landed when this module
 * was written. This reads only what the inspector needs (ELF header check, PT_LOAD program headers
 * and the GNU build-id note) and is to be replaced by parseElf once it exists.
 */

/** PT_* program header types used here (elf.h). */
export const PT_LOAD = 1;
export const PT_NOTE = 4;
const NT_GNU_BUILD_ID = 3;

/** A program header as the inspector needs it. */
export interface LoadSegment {
  type: number;
  flags: number;
  fileOffset: bigint;
  vaddr: bigint;
  fileSize: bigint;
  memSize: bigint;
  align: bigint;
}

/** What the inspector needs to know about a mapped ELF image. */
export interface ElfImageSummary {
  /** e_type: 2 ET_EXEC, 3 ET_DYN. */
  type: number;
  entry: bigint;
  programHeaders: LoadSegment[];
  /** GNU build-id as lower-case hex, if present. */
  buildId?: string;
}

/** True when `bytes` starts with the ELF magic. */
export function isElfMagic(bytes: Uint8Array): boolean {
  return bytes.byteLength >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
}

/** Returns undefined for anything that is not a well-formed little-endian ELF64 image. */
export function summarizeElf(bytes: Uint8Array): ElfImageSummary | undefined {
  if (bytes.byteLength < 64 || !isElfMagic(bytes) || bytes[4] !== 2 || bytes[5] !== 1) return undefined;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = dv.getUint16(16, true);
  const entry = dv.getBigUint64(24, true);
  const phoff = dv.getBigUint64(32, true);
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phentsize < 56 || phoff > BigInt(bytes.byteLength) || Number(phoff) + phnum * phentsize > bytes.byteLength) return undefined;
  const programHeaders: LoadSegment[] = [];
  let buildId: string | undefined;
  for (let i = 0; i < phnum; i++) {
    const o = Number(phoff) + i * phentsize;
    const ph: LoadSegment = {
      type: dv.getUint32(o, true),
      flags: dv.getUint32(o + 4, true),
      fileOffset: dv.getBigUint64(o + 8, true),
      vaddr: dv.getBigUint64(o + 16, true),
      fileSize: dv.getBigUint64(o + 32, true),
      memSize: dv.getBigUint64(o + 40, true),
      align: dv.getBigUint64(o + 48, true),
    };
    programHeaders.push(ph);
    if (ph.type === PT_NOTE && buildId === undefined && ph.fileOffset + ph.fileSize <= BigInt(bytes.byteLength)) {
      let p = Number(ph.fileOffset);
      const end = p + Number(ph.fileSize);
      while (p + 12 <= end) {
        const namesz = dv.getUint32(p, true);
        const descsz = dv.getUint32(p + 4, true);
        const ntype = dv.getUint32(p + 8, true);
        const nameOff = p + 12;
        const descOff = nameOff + ((namesz + 3) & ~3);
        const next = descOff + ((descsz + 3) & ~3);
        if (next > end || next <= p) break;
        if (ntype === NT_GNU_BUILD_ID && namesz === 4 && bytes[nameOff] === 0x47 && bytes[nameOff + 1] === 0x4e && bytes[nameOff + 2] === 0x55) {
          buildId = Buffer.from(bytes.subarray(descOff, descOff + descsz)).toString('hex');
          break;
        }
        p = next;
      }
    }
  }
  return { type, entry, programHeaders, buildId };
}
