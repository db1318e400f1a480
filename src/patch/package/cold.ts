/**
 * The cold payload: the complete fixed file carried in a package, compressed, so `apply --cold`
 * can install it on disk. Decompression is capped by the declared size (and a hard ceiling), and
 * the result is checked against the declared size and SHA-256 before anyone may use it.
 */
import { createHash } from 'node:crypto';
import { brotliCompressSync, brotliDecompressSync, constants as zc, deflateSync, inflateSync } from 'node:zlib';
import { PackageError } from '../../errors.js';
import { MAX_COLD_SIZE, type PackageColdPayload } from './codec.js';

/**
 * Compresses a fixed file into a cold payload.
 * @param file the complete fixed file
 * @param options `buildId` of the fixed file (lowercase hex), its permission `mode`, and the
 *   compression: zlib level 6 by default (99 MB binary: 2.3 s, 37%); brotli quality 5 is
 *   smaller and a little slower (3.7 s, 31%)
 */
export function makeColdPayload(
  file: Uint8Array,
  options: { buildId: string; mode: number; compression?: 'zlib' | 'brotli' },
): PackageColdPayload {
  if (file.byteLength > MAX_COLD_SIZE) {
    throw new PackageError('PACKAGE_TOO_LARGE', `the fixed file is ${file.byteLength} bytes, more than the ${MAX_COLD_SIZE}-byte cold payload limit`);
  }
  const compression = options.compression ?? 'zlib';
  const data =
    compression === 'zlib'
      ? deflateSync(file, { level: 6 })
      : brotliCompressSync(file, {
          params: { [zc.BROTLI_PARAM_QUALITY]: 5, [zc.BROTLI_PARAM_SIZE_HINT]: file.byteLength },
        });
  return {
    compression,
    mode: options.mode & 0o7777,
    size: file.byteLength,
    sha256: createHash('sha256').update(file).digest('hex'),
    buildId: options.buildId,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/**
 * Decompresses and checks a cold payload: at most `size` bytes are ever produced (a compression
 * bomb stops at the cap), and the result must have the declared size and SHA-256.
 * Throws PackageError PACKAGE_TOO_LARGE / PACKAGE_CORRUPT.
 */
export function extractColdFile(cold: PackageColdPayload): Uint8Array {
  if (cold.size > MAX_COLD_SIZE) {
    throw new PackageError('PACKAGE_TOO_LARGE', `cold payload declares ${cold.size} bytes, more than the ${MAX_COLD_SIZE}-byte limit`);
  }
  // maxOutputLength must be >= 1; one byte over the declared size reveals an overlong stream.
  const cap = cold.size + 1;
  let out: Buffer;
  try {
    out = cold.compression === 'zlib' ? inflateSync(cold.data, { maxOutputLength: cap }) : brotliDecompressSync(cold.data, { maxOutputLength: cap });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError) {
      throw new PackageError('PACKAGE_CORRUPT', `cold payload decompresses to more than its declared ${cold.size} bytes; the package is damaged or hostile`, { cause: e });
    }
    throw new PackageError('PACKAGE_CORRUPT', `cold payload does not decompress (${(e as Error).message}); the package is damaged`, { cause: e });
  }
  if (out.byteLength !== cold.size) {
    throw new PackageError('PACKAGE_CORRUPT', `cold payload decompresses to ${out.byteLength} bytes, declared ${cold.size}; the package is damaged`);
  }
  const sha = createHash('sha256').update(out).digest('hex');
  if (sha !== cold.sha256) throw new PackageError('PACKAGE_CORRUPT', 'cold payload SHA-256 does not match; the package is damaged');
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}
