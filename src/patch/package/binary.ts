/**
 * Bounds-checked little-endian reader and growable writer for the package codec.
 *
 * Every read checks the remaining bytes first, so a hostile length can never make the reader
 * allocate more than the input it was given; every failure is a PackageError with a stable code.
 */
import { PackageError } from '../../errors.js';

const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/** Reads fixed-width little-endian fields from a byte range; throws PackageError past the end. */
export class ByteReader {
  private readonly view: DataView;
  private pos: number;

  /**
   * @param input the buffer to read
   * @param what a label for error messages ("content section", "cold payload"...)
   * @param truncatedCode the code to use when a read runs past the end: PACKAGE_TRUNCATED for the
   *   file itself, PACKAGE_CORRUPT inside a section whose length was declared (and present)
   */
  private readonly buf: Uint8Array;

  constructor(
    input: Uint8Array,
    private readonly what: string,
    private readonly truncatedCode: 'PACKAGE_TRUNCATED' | 'PACKAGE_CORRUPT' = 'PACKAGE_CORRUPT',
  ) {
    // A plain Uint8Array view: Buffer#slice would alias instead of copy.
    this.buf = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    this.view = new DataView(input.buffer, input.byteOffset, input.byteLength);
    this.pos = 0;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.byteLength - this.pos;
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new PackageError(
        this.truncatedCode,
        `package ${this.what} ends inside ${field} (offset ${this.pos}, needs ${n} bytes, ${this.remaining} left); ` +
          'the file is truncated or damaged: copy or rebuild the package',
      );
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  i64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigInt64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** A copy of the next `n` bytes (copies so the result never aliases the caller's buffer). */
  take(n: number, field: string): Uint8Array {
    this.need(n, field);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A view (no copy) of the next `n` bytes. */
  peekView(n: number, field: string): Uint8Array {
    this.need(n, field);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A u16-length-prefixed UTF-8 string; invalid UTF-8 is corruption (it could not round-trip). */
  str(field: string): string {
    const n = this.u16(`${field} length`);
    const raw = this.peekView(n, field);
    try {
      return UTF8_STRICT.decode(raw);
    } catch {
      throw new PackageError('PACKAGE_CORRUPT', `package ${this.what}: ${field} is not valid UTF-8; the package is damaged`);
    }
  }

  /** A presence flag: exactly 0 or 1 (any other value would make the encoding non-canonical). */
  flag(field: string): boolean {
    const v = this.u8(field);
    if (v > 1) throw new PackageError('PACKAGE_CORRUPT', `package ${this.what}: ${field} flag is ${v}, expected 0 or 1`);
    return v === 1;
  }

  /**
   * A u32 element count, checked against the bytes left: each element takes at least
   * `minElementSize` bytes, so a count larger than remaining/min is corruption, caught before any loop.
   */
  count(field: string, minElementSize: number): number {
    const n = this.u32(`${field} count`);
    if (n * minElementSize > this.remaining) {
      throw new PackageError(
        'PACKAGE_CORRUPT',
        `package ${this.what}: ${field} count ${n} cannot fit in the ${this.remaining} bytes left; the package is damaged`,
      );
    }
    return n;
  }
}

/** Appends little-endian fields to a growing buffer. */
export class ByteWriter {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  private grow(n: number): void {
    if (this.len + n <= this.buf.byteLength) return;
    let cap = this.buf.byteLength * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.grow(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
    return this;
  }

  u16(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new RangeError(`u16 out of range: ${v}`);
    this.grow(2);
    this.view.setUint16(this.len, v, true);
    this.len += 2;
    return this;
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`u32 out of range: ${v}`);
    this.grow(4);
    this.view.setUint32(this.len, v, true);
    this.len += 4;
    return this;
  }

  u64(v: bigint): this {
    if (v < 0n || v > U64_MAX) throw new RangeError(`u64 out of range: ${v}`);
    this.grow(8);
    this.view.setBigUint64(this.len, v, true);
    this.len += 8;
    return this;
  }

  i64(v: bigint): this {
    if (v < I64_MIN || v > I64_MAX) throw new RangeError(`i64 out of range: ${v}`);
    this.grow(8);
    this.view.setBigInt64(this.len, v, true);
    this.len += 8;
    return this;
  }

  raw(bytes: Uint8Array): this {
    this.grow(bytes.byteLength);
    this.buf.set(bytes, this.len);
    this.len += bytes.byteLength;
    return this;
  }

  str(s: string): this {
    const b = UTF8_ENCODER.encode(s);
    this.u16(b.byteLength);
    return this.raw(b);
  }

  flag(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

export { U64_MAX, I64_MIN, I64_MAX };
