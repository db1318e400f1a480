/**
 * The package's unwind trailer (PatchPlan.unwind, issue #12): packages without it keep their bytes
 * and ids; with it they round-trip; truncated or damaged trailers and malformed .eh_frame images
 * are refused with a typed error.
 */
import { describe, expect, it } from 'vitest';
import { PackageError } from '../../src/errors.js';
import { createPackage, decodePackage, decodePackageContent, encodePackage, packageContentOf } from '../../src/patch/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { samplePlan } from './sample-plan.js';

const CREATED = '2026-11-25T12:00:00.000Z';

/** A CIE ("zR", pcrel|sdata4 FDE pointers) and one FDE covering 18 bytes of function 0, zero-terminated. */
function ehFrameImage(): Uint8Array {
  const cie = [0x14, 0, 0, 0, 0, 0, 0, 0, 1, 0x7a, 0x52, 0, 1, 0x78, 16, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0];
  const fde = [0x14, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
  return Uint8Array.from([...cie, ...fde, 0, 0, 0, 0]);
}

function unwindPlan(image = ehFrameImage()): PatchPlan {
  const plan = samplePlan();
  plan.data.push({
    name: '.eh_frame of the new code',
    bytes: image,
    align: 8,
    relocations: [{ offset: 32, type: 'pc32', target: { kind: 'local', part: 'function', index: 0, offset: 0 }, addend: 0n }],
  });
  plan.unwind = { ehFrame: plan.data.length - 1 };
  return plan;
}

function expectCode(fn: () => unknown, code: string, message?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(PackageError);
  expect((thrown as PackageError).code).toBe(code);
  if (message) expect((thrown as PackageError).message).toMatch(message);
}

describe('package unwind trailer', () => {
  it('a plan without unwind information encodes exactly as before (same id as packages made before the trailer existed)', () => {
    // Id of this package as computed by the codec before PatchPlan.unwind existed (main at 1c02b27).
    const pkg = createPackage(samplePlan(), { createdAt: CREATED });
    expect(pkg.id).toBe('e0af7da027e45c1e');
    const back = decodePackage(encodePackage(pkg));
    expect('unwind' in back.plan).toBe(false);
  });

  it('round-trips a plan with unwind information, under another id', () => {
    const pkg = createPackage(unwindPlan(), { createdAt: CREATED });
    const bytes = encodePackage(pkg);
    const back = decodePackage(bytes);
    expect(back).toEqual(pkg);
    expect(back.plan.unwind).toEqual({ ehFrame: 3 });
    expect(pkg.id).not.toBe('e0af7da027e45c1e');
    expect(Buffer.from(encodePackage(back))).toEqual(Buffer.from(bytes));
  });

  it('round-trips a plan with both optional parts: variables (part 1) then unwind information (part 2)', () => {
    const plan = unwindPlan();
    plan.data.splice(0, 0, { name: 'counter', bytes: new Uint8Array(8), align: 8, relocations: [], writable: true });
    plan.unwind = { ehFrame: plan.data.length - 1 };
    const pkg = createPackage(plan, { createdAt: CREATED });
    const back = decodePackage(encodePackage(pkg));
    expect(back).toEqual(pkg);
    expect(back.plan.data[0]).toMatchObject({ name: 'counter', writable: true, bytes: new Uint8Array(8) });
    expect(back.plan.unwind).toEqual({ ehFrame: plan.data.length - 1 });
  });

  it('every truncation of a content section with the trailer is refused', () => {
    const content = packageContentOf(encodePackage(createPackage(unwindPlan(), { createdAt: CREATED })));
    const withoutTrailer = content.length - 5;
    for (let n = 0; n < content.length; n++) {
      if (n !== withoutTrailer) expect(() => decodePackageContent(content.subarray(0, n)), `prefix ${n}`).toThrow(PackageError);
    }
    // Cut exactly before the trailer it is a plan without unwind information, under another id
    // (so a signature over the full content no longer matches).
    const cut = decodePackageContent(content.subarray(0, withoutTrailer));
    expect(cut.plan.unwind).toBeUndefined();
    expect(cut.id).not.toBe(decodePackageContent(content).id);
  });

  it('a damaged trailer is refused as corrupt', () => {
    const content = packageContentOf(encodePackage(createPackage(unwindPlan(), { createdAt: CREATED })));
    const form = content.slice();
    form[form.length - 5] = 3;
    expectCode(() => decodePackageContent(form), 'PACKAGE_CORRUPT', /unknown part 3/);
    const index = content.slice();
    index[index.length - 4] = 9;
    expectCode(() => decodePackageContent(index), 'PACKAGE_CORRUPT', /\.eh_frame data index 9/);
    const index0 = content.slice();
    index0[index0.length - 4] = 0; // data 0 is a string, not an .eh_frame image
    expectCode(() => decodePackageContent(index0), 'PACKAGE_CORRUPT', /terminator|not a valid \.eh_frame/);
    expectCode(() => decodePackageContent(Uint8Array.from([...content, 0])), 'PACKAGE_CORRUPT', /out of order|stray bytes/);
    expectCode(() => decodePackageContent(Uint8Array.from([...content, 2, 0, 0, 0, 0])), 'PACKAGE_CORRUPT', /repeated or out of order/);
  });

  it('refuses plans whose .eh_frame image the target unwinder could not parse', () => {
    const cases: { name: string; edit: (b: Uint8Array) => Uint8Array; message: RegExp }[] = [
      { name: 'no terminator', edit: (b) => b.subarray(0, b.length - 4), message: /terminator/ },
      { name: 'CIE pointer to nowhere', edit: (b) => (b.set([20], 28), b), message: /names no CIE/ },
      { name: 'record longer than the image', edit: (b) => (b.set([0x40], 24), b), message: /runs past/ },
      { name: 'bytes after the last record', edit: (b) => Uint8Array.from([...b.subarray(0, 48), 0, 0, 0, 0, 0, 0, 0, 0]), message: /terminator right after its last record/ },
      { name: 'unknown CIE version', edit: (b) => (b.set([7], 8), b), message: /version 7/ },
      { name: 'only a CIE', edit: (b) => Uint8Array.from([...b.subarray(0, 24), 0, 0, 0, 0]), message: /holds no FDE/ },
    ];
    for (const c of cases) {
      const plan = unwindPlan(c.edit(ehFrameImage()));
      plan.data[3]!.relocations = plan.data[3]!.relocations.filter((r) => r.offset + 4 <= plan.data[3]!.bytes.length);
      expectCode(() => createPackage(plan, { createdAt: CREATED }), 'PACKAGE_INVALID', c.message);
    }
  });
});
