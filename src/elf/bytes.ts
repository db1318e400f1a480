/**
 * Bounds-checked little-endian reads over the input bytes. Every range that comes from the file is
 * checked here before it is read, so a hostile offset turns into an `ElfError`, never a RangeError.
 */
import { ElfError } from '../errors.js';

/** Stable codes of the `ElfError`s thrown by the ELF and DWARF readers. */
export const ElfErrorCode = {
  /** The file is shorter than the ELF header or a header table it declares. */
  TRUNCATED: 'ELF_TRUNCATED',
  /** Not an ELF file. */
  BAD_MAGIC: 'ELF_BAD_MAGIC',
  /** ELF, but not ELFCLASS64 little-endian x86-64 (or an unsupported feature, e.g. compressed sections). */
  UNSUPPORTED: 'ELF_UNSUPPORTED',
  /** An offset, size or index points outside the file, a table or a string table. */
  OUT_OF_RANGE: 'ELF_OUT_OF_RANGE',
  /** Inconsistent structure: wrong entry size, sh_link to the wrong type, loops in version chains... */
  BAD_STRUCTURE: 'ELF_BAD_STRUCTURE',
  /** `getX` found no X (the matching `findX` returns undefined). */
  NOT_FOUND: 'ELF_NOT_FOUND',
} as const;
export type ElfErrorCode = (typeof ElfErrorCode)[keyof typeof ElfErrorCode];

/** Throws an ElfError; `label` names the file in the message when the caller gave one. */
export function elfFail(code: ElfErrorCode, message: string, label?: string): never {
  throw new ElfError(code, label ? `${label}: ${message}` : message);
}

/** Longest C string accepted in a string table (bounds the work for tables without NULs). */
export const MAX_STRING_LENGTH = 1 << 16;

const utf8 = new TextDecoder('utf-8');

/** Little-endian reader; callers check ranges with `range()` before reading. */
export class ByteReader {
  readonly u8: Uint8Array;
  readonly dv: DataView;
  readonly length: number;
  readonly label: string | undefined;

  constructor(u8: Uint8Array, label?: string) {
    this.u8 = u8;
    this.dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    this.length = u8.byteLength;
    this.label = label;
  }

  fail(code: ElfErrorCode, message: string): never {
    return elfFail(code, message, this.label);
  }

  /**
   * Checks that [offset, offset+size) lies inside the file and returns the offset as a number.
   * `code` lets header tables report ELF_TRUNCATED and contents ELF_OUT_OF_RANGE.
   */
  range(offset: bigint, size: bigint, what: string, code: ElfErrorCode = ElfErrorCode.OUT_OF_RANGE): number {
    if (offset < 0n || size < 0n || offset + size > BigInt(this.length)) {
      this.fail(code, `${what} (offset 0x${offset.toString(16)}, size 0x${size.toString(16)}) lies outside the file of ${this.length} bytes; the file is truncated or corrupt`);
    }
    return Number(offset);
  }

  u8At(off: number): number {
    return this.u8[off]!;
  }
  u16(off: number): number {
    return this.dv.getUint16(off, true);
  }
  u32(off: number): number {
    return this.dv.getUint32(off, true);
  }
  u64(off: number): bigint {
    return this.dv.getBigUint64(off, true);
  }
  i64(off: number): bigint {
    return this.dv.getBigInt64(off, true);
  }
}

/** A string table: a checked byte range of the file. */
export class StringTable {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  readonly #label: string | undefined;
  /**
   * Characters this table may still decode. Hostile tables can point thousands of symbols into one
   * long string at distinct offsets; real ones decode a few times their size at most.
   */
  #budget: number;

  constructor(bytes: Uint8Array, what: string, label?: string) {
    this.#bytes = bytes;
    this.#what = what;
    this.#label = label;
    this.#budget = 8 * bytes.length + (1 << 20);
  }

  get size(): number {
    return this.#bytes.length;
  }

  /** The NUL-terminated string at `offset`; ELF_OUT_OF_RANGE when it starts or ends outside the table. */
  get(offset: number): string {
    const b = this.#bytes;
    if (offset === 0 && b.length > 0 && b[0] === 0) return '';
    if (offset < 0 || offset >= b.length) {
      elfFail(ElfErrorCode.OUT_OF_RANGE, `string offset ${offset} is outside ${this.#what} (${b.length} bytes)`, this.#label);
    }
    const limit = Math.min(b.length, offset + MAX_STRING_LENGTH + 1);
    let end = b.indexOf(0, offset);
    if (end < 0 || end >= limit) {
      elfFail(ElfErrorCode.OUT_OF_RANGE, `string at offset ${offset} in ${this.#what} is not NUL-terminated within the table`, this.#label);
    }
    const len = end - offset;
    this.#budget -= len;
    if (this.#budget < 0) {
      elfFail(ElfErrorCode.BAD_STRUCTURE, `${this.#what}: names decode to far more text than the table holds (overlapping long strings)`, this.#label);
    }
    if (len <= 48) {
      // Fast path for short ASCII names (most symbols): avoids a TextDecoder call per symbol.
      let s = '';
      for (let i = offset; i < end; i++) {
        const c = b[i]!;
        if (c >= 0x80) return utf8.decode(b.subarray(offset, end));
        s += String.fromCharCode(c);
      }
      return s;
    }
    return utf8.decode(b.subarray(offset, end));
  }
}
