import { describe, expect, it } from 'vitest';
import { PackageError } from '../../src/errors.js';
import {
  createPackage,
  decodePackage,
  encodePackage,
  extractColdFile,
  generateKeyPair,
  makeColdPayload,
  parsePublicKey,
  signPackage,
  verifyPackageSignature,
} from '../../src/patch/index.js';
import { prng, samplePlan } from './sample-plan.js';

const ITERATIONS = 20_000;

describe('hostile packages', () => {
  it(`${ITERATIONS} mutated/truncated packages each decode or throw PackageError`, () => {
    const pair = generateKeyPair('fuzz');
    const trusted = [parsePublicKey(pair.publicKeyText)];
    const cold = makeColdPayload(new TextEncoder().encode('cold file contents '.repeat(20)), { buildId: 'abcd', mode: 0o755 });
    const seeds = [
      encodePackage(createPackage(samplePlan(), { createdAt: '2026-01-01T00:00:00Z' })),
      signPackage(encodePackage(createPackage(samplePlan(), { createdAt: '2026-01-01T00:00:00Z', description: 'd', cold })), pair.privateKeyPem),
    ];
    const rand = prng(0x5eed);
    const int = (n: number): number => Math.floor(rand() * n);
    const outcomes = { decoded: 0, errors: {} as Record<string, number> };
    for (let i = 0; i < ITERATIONS; i++) {
      const seed = seeds[i % seeds.length]!;
      let m = seed.slice();
      const ops = 1 + int(4);
      for (let k = 0; k < ops; k++) {
        const at = int(m.byteLength + 1);
        switch (int(7)) {
          case 0: // bit flip
            if (at < m.byteLength) m[at]! ^= 1 << int(8);
            break;
          case 1: // random byte
            if (at < m.byteLength) m[at] = int(256);
            break;
          case 2: // truncate
            m = m.slice(0, at);
            break;
          case 3: // hostile u32 (counts, lengths)
            if (at + 4 <= m.byteLength) new DataView(m.buffer).setUint32(at, [0xffffffff, 0x7fffffff, 0x10000, int(2 ** 32)][int(4)]!, true);
            break;
          case 4: // insert junk
            m = new Uint8Array([...m.subarray(0, at), ...Array.from({ length: 1 + int(16) }, () => int(256)), ...m.subarray(at)]);
            break;
          case 5: // delete a range
            m = new Uint8Array([...m.subarray(0, at), ...m.subarray(at + 1 + int(16))]);
            break;
          default: // small integer increment (lengths off by one)
            if (at < m.byteLength) m[at] = (m[at]! + (rand() < 0.5 ? 1 : 255)) & 0xff;
        }
      }
      try {
        const pkg = decodePackage(m);
        outcomes.decoded++;
        // Whatever decodes must also survive the later steps without crashing.
        verifyPackageSignature(pkg, trusted);
        encodePackage(pkg);
        if (pkg.cold) {
          try {
            extractColdFile(pkg.cold);
          } catch (e) {
            if (!(e instanceof PackageError)) throw e;
          }
        }
      } catch (e) {
        if (!(e instanceof PackageError)) throw new Error(`iteration ${i}: not a PackageError: ${String(e)}`, { cause: e });
        outcomes.errors[e.code] = (outcomes.errors[e.code] ?? 0) + 1;
      }
    }
    console.log(`fuzz: ${ITERATIONS} mutated packages:`, outcomes);
    expect(outcomes.decoded).toBeGreaterThan(0);
    expect(Object.keys(outcomes.errors).length).toBeGreaterThanOrEqual(3);
  });
});
