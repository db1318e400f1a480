/**
 * Renamed compilation units (issue #12.3): a fix saved under another file name pairs with the
 * running unit by its statics, on real gcc builds; ambiguous pairings are one refusal that names
 * the units, resolved by naming the pairs.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HotpatchError } from '../../src/errors.js';
import { STB_GLOBAL, STB_LOCAL, STT_FUNC, STT_OBJECT, type ElfSymbol } from '../../src/elf/index.js';
import { buildPatch, BuildRefusedError, RefusalCode, type BuildOptions } from '../../src/patch/builder/index.js';
import { pairUnits } from '../../src/patch/builder/units.js';
import { applyPatch, removePatch } from '../../src/patch/engine/index.js';
import { createPackage, decodePackage, encodePackage, validatePlan } from '../../src/patch/package/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { ask, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { buildPair } from './pairs.js';

killTargetsAfterAll();

async function build(scenario: string, options: BuildOptions = {}) {
  const p = await buildPair(scenario);
  return { pair: p, run: () => buildPatch(new Uint8Array(readFileSync(p.old)), new Uint8Array(readFileSync(p.new)), { oldName: p.old, ...options }) };
}

const names = (p: PatchPlan) => p.functions.map((f) => `${f.name}@${f.file ?? ''}`).sort();

describe('renamed compilation units', () => {
  it('one unit saved under another name: paired by its statics, applied to the running build, removed again', async () => {
    const progress: string[] = [];
    const { pair, run } = await build('renamed_unit', { progress: (m) => progress.push(m) });
    const r = run();
    expect(progress).toContain('compilation unit server-fixed.c of the new build paired with server.c of the running build');
    expect(names(r.plan)).toEqual([expect.stringMatching(/^handle(\.\w+\.\d+)?@server\.c$/)]);
    validatePlan(r.plan);
    const pkg = decodePackage(encodePackage(createPackage(r.plan)));
    const t = await startTarget(pair.old, []);
    try {
      await ask(t, '5', /^1105\n/);
      await applyPatch(t.pid, pkg.plan, { patchId: pkg.id });
      // The static request counter of the running unit keeps counting: 2nd request.
      await ask(t, '5', /^2110\n/);
      await removePatch(t.pid, pkg.id);
      await ask(t, '5', /^3105\n/);
    } finally {
      await t.kill();
    }
  });

  it('several units renamed, each with a same-named static: each pairs with its own', async () => {
    const r = (await build('renamed_units')).run();
    expect(names(r.plan)).toEqual([expect.stringMatching(/^frame(\.\w+\.\d+)?@net\.c$/), expect.stringMatching(/^slot(\.\w+\.\d+)?@store\.c$/)]);
  });

  it('units with identical statics: one refusal naming them and how to resolve it; naming the pairs builds', async () => {
    const { run } = await build('fail_units_ambiguous');
    let err: unknown;
    try {
      run();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BuildRefusedError);
    const e = err as BuildRefusedError;
    expect(e.code).toBe(RefusalCode.UNITS_UNPAIRED);
    expect(e.refusals).toHaveLength(1);
    expect(e.refusals[0]!.symbol).toBe('one-fixed.c, two-fixed.c');
    expect(e.message).toMatch(/one-fixed\.c, two-fixed\.c of the new build .* which of one\.c, two\.c .* --unit NEW=OLD/);

    const ok = (await build('fail_units_ambiguous', { units: { 'one-fixed.c': 'one.c', 'two-fixed.c': 'two.c' } })).run();
    expect(names(ok.plan)).toEqual([expect.stringMatching(/^bump(\.\w+\.\d+)?@two\.c$/)]);
    // Paired the wrong way round, the units' callers differ too: the pairs given are the pairs used.
    const crossed = (await build('fail_units_ambiguous', { units: { 'one-fixed.c': 'two.c', 'two-fixed.c': 'one.c' } })).run();
    expect(names(crossed.plan)).toContain('one@');
  });

  it('a pair naming a unit the build does not have is an input error', async () => {
    const { run } = await build('renamed_unit', { units: { 'nope.c': 'server.c' } });
    expect(run).toThrow(HotpatchError);
    expect(run).toThrow(/--unit nope\.c=server\.c: the new build has no compilation unit nope\.c/);
  });
});

describe('pairing units by content (pure)', () => {
  let index = 0;
  const sym = (file: string, name: string, size = 8n, type = STT_FUNC, bind = STB_LOCAL): ElfSymbol =>
    ({ index: index++, name, value: 0x1000n, size, type, bind, visibility: 0, other: 0, shndx: 1, file }) as ElfSymbol;
  const unit = (file: string, ...names: string[]) => names.map((n) => sym(file, n));

  it('same names pair as themselves; a renamed unit pairs when most statics match; units new in the fix are left alone', () => {
    const old = [...unit('a.c', 'x', 'y'), ...unit('srv.c', 'h1', 'h2', 'h3', 'h4')];
    const neu = [...unit('a.c', 'x', 'y'), ...unit('srv2.c', 'h1', 'h2', 'h3', 'h5'), ...unit('new.c', 'fresh'), sym('g.c', 'exported', 8n, STT_FUNC, STB_GLOBAL)];
    expect(pairUnits(old, neu)).toEqual({ renamed: new Map([['srv2.c', 'srv.c']]) });
  });

  it('too little in common is refused (not guessed), naming both sides', () => {
    const r = pairUnits([...unit('srv.c', 'h1', 'h2', 'h3', 'h4')], [...unit('srv2.c', 'h1', 'z2', 'z3', 'z4')]);
    expect(r.renamed.size).toBe(0);
    expect(r.refusal).toMatchObject({ code: RefusalCode.UNITS_UNPAIRED, symbol: 'srv2.c' });
    expect(r.refusal!.message).toMatch(/which of srv\.c each replaces/);
  });

  it('equal names are told apart by sizes', () => {
    const old = [sym('one.c', 'counter', 4n, STT_OBJECT), sym('one.c', 'bump', 20n), sym('two.c', 'counter', 8n, STT_OBJECT), sym('two.c', 'bump', 30n)];
    const neu = [sym('uno.c', 'counter', 8n, STT_OBJECT), sym('uno.c', 'bump', 31n), sym('dos.c', 'counter', 4n, STT_OBJECT), sym('dos.c', 'bump', 20n)];
    expect(pairUnits(old, neu)).toEqual({ renamed: new Map([['uno.c', 'two.c'], ['dos.c', 'one.c']]) });
  });
});
