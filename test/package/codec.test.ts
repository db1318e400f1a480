import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PackageError } from '../../src/errors.js';
import {
  createPackage,
  decodePackage,
  encodePackage,
  extractColdFile,
  makeColdPayload,
  PACKAGE_MAGIC,
  type PatchPackage,
} from '../../src/patch/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { samplePlan } from './sample-plan.js';

const CREATED = '2026-11-25T12:00:00.000Z';

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PackageError);
    expect((e as PackageError).code).toBe(code);
    return;
  }
  throw new Error(`expected PackageError ${code}, nothing was thrown`);
}

describe('package codec', () => {
  it('round-trips a realistic plan exactly (bigints > 2^53, empty arrays, data, cold payload)', () => {
    const file = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
    const cold = makeColdPayload(file, { buildId: 'aabbccdd', mode: 0o755, compression: 'brotli' });
    const pkg = createPackage(samplePlan(), { createdAt: CREATED, description: 'fix the parser', cold });
    const bytes = encodePackage(pkg);
    expect(Buffer.from(bytes.subarray(0, 8))).toEqual(Buffer.from(PACKAGE_MAGIC));
    const back = decodePackage(bytes);
    expect(back).toEqual(pkg);
    expect(back.plan.functions[1]!.vaddr).toBe(0xffff_8000_0000_1000n);
    expect(back.plan.data[1]!.relocations[1]!.addend).toBe(-(1n << 62n));
    expect(back.plan.functions[0]!.file).toBe('parser.c');
    expect('file' in back.plan.functions[1]!).toBe(false);
    expect(back.cold!.data.byteLength).toBeLessThan(file.byteLength);
    expect(Buffer.from(extractColdFile(back.cold!))).toEqual(Buffer.from(file));
    // Re-encoding the decoded package gives the same bytes.
    expect(Buffer.from(encodePackage(back))).toEqual(Buffer.from(bytes));
  });

  it('round-trips an empty plan and zlib cold payloads', () => {
    const plan: PatchPlan = { target: { buildId: 'ab', name: 'x', size: 0 }, functions: [], data: [] };
    const cold = makeColdPayload(new Uint8Array(0), { buildId: 'cd', mode: 0o644 });
    const pkg = createPackage(plan, { createdAt: CREATED, cold });
    const back = decodePackage(encodePackage(pkg));
    expect(back).toEqual(pkg);
    expect(extractColdFile(back.cold!).byteLength).toBe(0);
  });

  it('derives a stable id from the content', () => {
    const a = createPackage(samplePlan(), { createdAt: CREATED });
    const b = createPackage(samplePlan(), { createdAt: CREATED });
    expect(a.id).toMatch(/^[0-9a-f]{16}$/);
    expect(b.id).toBe(a.id);
    expect(decodePackage(encodePackage(a)).id).toBe(a.id);
    const changed = samplePlan();
    changed.functions[0]!.code[0] = 0x90;
    expect(createPackage(changed, { createdAt: CREATED }).id).not.toBe(a.id);
    // A stale id in the object is ignored: the encoded package carries the derived one.
    const stale: PatchPackage = { ...a, id: '0000000000000000' };
    expect(decodePackage(encodePackage(stale)).id).toBe(a.id);
  });

  it('refuses to write invalid plans', () => {
    const bad: Array<(p: PatchPlan) => void> = [
      (p) => (p.functions[0]!.align = 3),
      (p) => (p.functions[0]!.align = 8192),
      (p) => (p.functions[0]!.relocations[0]!.offset = 15),
      (p) => (p.functions[0]!.entry.expected = new Uint8Array(1)),
      (p) => (p.functions[0]!.entry.expected = new Uint8Array(33)),
      (p) => (p.data[1]!.relocations[0]!.target = { kind: 'local', part: 'function', index: 2, offset: 0 }),
      (p) => (p.data[1]!.relocations[0]!.target = { kind: 'local', part: 'data', index: 0, offset: 99 }),
      (p) => (p.target.buildId = 'XYZ'),
      (p) => (p.functions[0]!.oldHash = 'abc'),
      (p) => ((p.functions[0]!.relocations[0] as { type: string }).type = 'got64'),
      (p) => (p.functions[1]!.vaddr = p.functions[0]!.vaddr),
      (p) => (p.functions[0]!.vaddr = -1n),
      (p) => (p.functions[0]!.name = ''),
      (p) => (p.functions[1]!.entry.siteVaddr += 100n),
      (p) => (p.functions[1]!.entry.switchVaddr += 1n),
      (p) => (p.functions[1]!.entry.expected = new Uint8Array(6)),
      (p) => (p.functions[0]!.entry = { ...p.functions[0]!.entry, siteVaddr: 0x401134n, expected: new Uint8Array(4) }),
      (p) => (p.functions[0]!.entry.switchVaddr += 1n),
    ];
    for (const mutate of bad) {
      const p = samplePlan();
      mutate(p);
      expectCode(() => createPackage(p, { createdAt: CREATED }), 'PACKAGE_INVALID');
    }
  });

  it('gives typed errors for bad magic, versions, truncation and oversized declarations', () => {
    const bytes = encodePackage(createPackage(samplePlan(), { createdAt: CREATED }));
    expectCode(() => decodePackage(new Uint8Array(0)), 'PACKAGE_BAD_MAGIC');
    expectCode(() => decodePackage(new TextEncoder().encode('\x7fELF....')), 'PACKAGE_BAD_MAGIC');
    expectCode(() => decodePackage(bytes.subarray(0, 5)), 'PACKAGE_TRUNCATED');
    expectCode(() => decodePackage(bytes.subarray(0, 12)), 'PACKAGE_TRUNCATED');
    expectCode(() => decodePackage(bytes.subarray(0, bytes.byteLength - 1)), 'PACKAGE_TRUNCATED');
    const v2 = bytes.slice();
    v2[8] = 2;
    expectCode(() => decodePackage(v2), 'PACKAGE_UNSUPPORTED_VERSION');
    // An unknown critical section needs a newer hotpatch; an ancillary one is skipped.
    const extra = (tag: string): Uint8Array => {
      const out = new Uint8Array(bytes.byteLength + 10);
      out.set(bytes);
      out.set(new TextEncoder().encode(tag), bytes.byteLength);
      new DataView(out.buffer).setUint32(bytes.byteLength + 4, 2, true);
      return out;
    };
    expectCode(() => decodePackage(extra('XTRA')), 'PACKAGE_UNSUPPORTED_VERSION');
    expect(decodePackage(extra('note')).id).toBe(decodePackage(bytes).id);
    // Trailing garbage is a truncated section.
    expectCode(() => decodePackage(new Uint8Array([...bytes, 1, 2, 3])), 'PACKAGE_TRUNCATED');
  });

  it('caps cold payload decompression by the declared size', () => {
    const bomb = makeColdPayload(new Uint8Array(10_000_000), { buildId: 'ab', mode: 0o755 });
    const lying = { ...bomb, size: 1000 };
    const bytes = encodePackage(createPackage(samplePlan(), { createdAt: CREATED, cold: lying }));
    const back = decodePackage(bytes); // decoding does not decompress
    expectCode(() => extractColdFile(back.cold!), 'PACKAGE_CORRUPT');
    expectCode(() => extractColdFile({ ...bomb, size: 2 ** 31 }), 'PACKAGE_TOO_LARGE');
    expectCode(() => extractColdFile({ ...bomb, sha256: '0'.repeat(64) }), 'PACKAGE_CORRUPT');
    expectCode(() => extractColdFile({ ...bomb, data: new Uint8Array([1, 2, 3]) }), 'PACKAGE_CORRUPT');
    // A declared size over the ceiling is refused while decoding.
    const raw = encodePackage(createPackage(samplePlan(), { createdAt: CREATED, cold: bomb }));
    const contentLen = new DataView(raw.buffer, raw.byteOffset).getUint32(16, true);
    const sizeAt = 12 + 8 + contentLen + 8 + 1 + 4;
    const huge = raw.slice();
    new DataView(huge.buffer).setBigUint64(sizeAt, 1n << 40n, true);
    expectCode(() => decodePackage(huge), 'PACKAGE_TOO_LARGE');
  });
});

describe('package codec with Node Buffers', () => {
  it('decoded byte arrays are copies, not views of the input Buffer', () => {
    const buf = Buffer.from(encodePackage(createPackage(samplePlan(), { createdAt: CREATED })));
    const pkg = decodePackage(buf);
    const code = pkg.plan.functions[0]!.code;
    expect(Object.getPrototypeOf(code)).toBe(Uint8Array.prototype);
    const before = code[0];
    buf.fill(0);
    expect(code[0]).toBe(before);
  });
});

describe('content section on its own (as stored in patch records)', () => {
  it('packageContentOf + decodePackageContent give back the plan and the package id', async () => {
    const { createPackage: create, encodePackage: encode, decodePackage: decode, packageContentOf, decodePackageContent } = await import('../../src/patch/package/index.js');
    const pkg = create(samplePlan(), { createdAt: '2026-01-01T00:00:00Z' });
    const bytes = encode(pkg);
    const content = packageContentOf(bytes);
    const back = decodePackageContent(content);
    expect(back.id).toBe(decode(bytes).id);
    expect(back.plan).toEqual(decode(bytes).plan);
  });

  it('a damaged or truncated content section throws PackageError', async () => {
    const { createPackage: create, encodePackage: encode, packageContentOf, decodePackageContent } = await import('../../src/patch/package/index.js');
    const content = packageContentOf(encode(create(samplePlan())));
    for (const bad of [content.subarray(0, content.length - 1), content.subarray(0, 10), new Uint8Array(0)]) {
      expect(() => decodePackageContent(bad)).toThrow(PackageError);
    }
    expect(() => packageContentOf(new Uint8Array([1, 2, 3]))).toThrow(PackageError);
  });

  describe('variables (writable data a fix adds)', () => {
    function withVariables(): PatchPlan {
      const plan = samplePlan();
      const table = new Uint8Array(24).map((_, i) => i + 1);
      plan.data.push(
        { name: 'counter (server.c)', bytes: new Uint8Array(8), align: 8, relocations: [], writable: true },
        { name: 'handlers', bytes: table, align: 8, relocations: [{ offset: 8, type: 'abs64', target: { kind: 'local', part: 'function', index: 0, offset: 0 }, addend: 0n }], writable: true },
      );
      return plan;
    }

    it('round-trip: zero-filled and initialised variables, relocations inside them; zero-filled ones cost no bytes', () => {
      const pkg = createPackage(withVariables(), { createdAt: CREATED });
      const bytes = encodePackage(pkg);
      const back = decodePackage(bytes);
      expect(back).toEqual(pkg);
      expect(back.plan.data.map((d) => d.writable === true)).toEqual([...samplePlan().data.map(() => false), true, true]);
      expect('writable' in back.plan.data[0]!).toBe(false);
      expect(back.plan.data.at(-2)!.bytes).toEqual(new Uint8Array(8));
      expect(Buffer.from(encodePackage(back))).toEqual(Buffer.from(bytes));
      const big = withVariables();
      big.data.at(-2)!.bytes = new Uint8Array(1 << 20);
      expect(encodePackage(createPackage(big, { createdAt: CREATED })).length).toBeLessThan(bytes.length + 64);
    });

    it('a plan without variables encodes exactly as before variables existed (same bytes and id as main)', () => {
      const pkg = createPackage(samplePlan(), { createdAt: CREATED });
      expect(pkg.id).toBe('e0af7da027e45c1e');
      expect(createHash('sha256').update(encodePackage(pkg)).digest('hex')).toBe('8417a8584bdf167851c30fdcfd567de9fdbcf64a0e48602e8dda9e27d9525f46');
    });

    it('truncated or corrupted variable lists are PackageError', async () => {
      const { packageContentOf, decodePackageContent } = await import('../../src/patch/package/index.js');
      const content = packageContentOf(encodePackage(createPackage(withVariables(), { createdAt: CREATED })));
      expect(decodePackageContent(content).plan.data.filter((d) => d.writable).length).toBe(2);
      // The part is at the very end: u8 1 | u32 2 | (u32 index | u32 zeroSize) x 2.
      const part = content.length - 21;
      expect(content[part]).toBe(1);
      const mutate = (f: (b: Uint8Array, v: DataView) => void) => {
        const b = content.slice();
        f(b, new DataView(b.buffer));
        return b;
      };
      const bad = [
        content.subarray(0, content.length - 1),
        content.subarray(0, part + 3),
        mutate((b) => (b[part] = 2)), // unknown part
        mutate((_, v) => v.setUint32(part + 1, 3, true)), // more entries than bytes
        mutate((_, v) => v.setUint32(part + 5 + 8, v.getUint32(part + 5, true), true)), // index repeated
        mutate((_, v) => v.setUint32(part + 5 + 8, 999, true)), // no such data
        mutate((_, v) => v.setUint32(part + 5 + 12, 24, true)), // zero-filled but has bytes
        mutate((_, v) => v.setUint32(part + 5 + 4, 0xffff_ffff, true)), // absurd size
      ];
      for (const b of bad) expect(() => decodePackageContent(b), Buffer.from(b.subarray(part)).toString('hex')).toThrow(PackageError);
    });
  });
});
