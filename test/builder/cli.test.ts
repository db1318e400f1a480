/**
 * `hotpatch build` as users and scripts run it (the compiled CLI, as `npm test` builds it first):
 * summary, --json shape, signing with --key, the cold payload, refusals (exit 3), usage errors.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { decodePackage, extractColdFile } from '../../src/patch/package/index.js';
import { REPO_ROOT } from '../helpers/native.js';
import { buildPair } from './pairs.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');

async function hotpatch(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe('hotpatch build', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-build-cli-'));

  it('writes a package and prints the changed functions', async () => {
    const p = await buildPair('switch');
    const out = join(dir, 'switch.hpk');
    const r = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 changed function\(s\):\n {2}dispatch at 0x[0-9a-f]+: \d+ -> \d+ bytes, .*entry padded \(patchable-function-entry\)/);
    expect(r.stdout).toMatch(/jump table of dispatch: 40 bytes, 10 relocations/);
    const pkg = decodePackage(new Uint8Array(readFileSync(out)));
    expect(pkg.plan.functions.map((f) => f.name)).toEqual(['dispatch']);
    expect(pkg.signature).toBeUndefined();
    expect(pkg.cold).toBeUndefined();
  });

  it('--json --key --cold: one JSON document, a signed package carrying the fixed file', async () => {
    const p = await buildPair('strings');
    const key = join(dir, 'release.key');
    const kg = await hotpatch(['keygen', '-o', key]);
    expect(kg.code, kg.stderr).toBe(0);
    const out = join(dir, 'strings.hpk');
    const r = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out, '--key', key, '--cold', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(doc).toMatchObject({ package: out, signed: true, cold: true, target: { name: 'prog' } });
    expect((doc.functions as { name: string; entry: string }[]).map((f) => [f.name, f.entry])).toEqual([['label', 'padded']]);
    expect((doc.data as { name: string }[]).some((d) => d.name.includes('below zero (fixed)'))).toBe(true);
    const pkg = decodePackage(new Uint8Array(readFileSync(out)));
    expect(pkg.id).toBe(doc.id);
    expect(pkg.signature?.keyId).toBe((doc.signer as { keyId: string }).keyId);
    expect(Buffer.compare(extractColdFile(pkg.cold!), readFileSync(p.new))).toBe(0);
  });

  it('a refusal exits 3 and names every reason; with --json stdout holds the refusals', async () => {
    const p = await buildPair('fail_tls_changed');
    const out = join(dir, 'refused.hpk');
    const human = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out]);
    expect(human.code).toBe(3);
    expect(human.stderr).toMatch(/tls_b in \.tdata.*\[REFUSED_DATA_ADDED\]/s);
    const r = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out, '--json']);
    expect(r.code).toBe(3);
    const doc = JSON.parse(r.stdout) as { refused: boolean; code: string; refusals: { code: string; symbol: string }[] };
    expect(doc.refused).toBe(true);
    expect(doc.code).toBe('REFUSED_DATA_ADDED');
    expect(doc.refusals).toContainEqual(expect.objectContaining({ code: 'REFUSED_DATA_ADDED', symbol: 'tls_b' }));
    await expect(run('test', ['-e', out])).rejects.toBeTruthy();
  });

  it('renamed units: an ambiguous pairing exits 3 with one refusal; --unit NEW=OLD resolves it; a malformed --unit exits 2', async () => {
    const p = await buildPair('fail_units_ambiguous');
    const out = join(dir, 'units.hpk');
    const refused = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(/refused \(1 reason\).*one-fixed\.c, two-fixed\.c .*--unit NEW=OLD.*\[REFUSED_UNITS_UNPAIRED\]/s);
    const ok = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out, '--unit', 'one-fixed.c=one.c', '--unit', 'two-fixed.c=two.c']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/bump[.\w]* \(two\.c\)/);
    const bad = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', out, '--unit', 'one-fixed.c']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--unit one-fixed\.c is not NEW=OLD.*\[USAGE_BAD_UNIT\]/);
  });

  it('usage errors: missing options exit 2, unreadable input exits 2, not ELF exits 1', async () => {
    expect((await hotpatch(['build', '--old', '/nonexistent'])).code).toBe(2);
    const r = await hotpatch(['build', '--old', '/nonexistent/old', '--new', '/nonexistent/new', '-o', join(dir, 'x.hpk')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot read the old build \/nonexistent\/old/);
    const notElf = await hotpatch(['build', '--old', join(REPO_ROOT, 'package.json'), '--new', join(REPO_ROOT, 'package.json'), '-o', join(dir, 'y.hpk')]);
    expect(notElf.code).toBe(1);
    expect(notElf.stderr).toMatch(/ELF/);
  });
});

describe('hotpatch build: refusal output', () => {
  it('prints each refusal on its own line with its own [CODE]', async () => {
    const p = await buildPair('fail_export_added', { shared: true });
    const r = await hotpatch(['build', '--old', p.old, '--new', p.new, '-o', join(mkdtempSync(join(tmpdir(), 'hotpatch-refusal-')), 'x.hpk')]);
    expect(r.code).toBe(3);
    const lines = r.stderr.split('\n').filter((l) => /\[REFUSED_[A-Z_0-9]+\]$/.test(l));
    expect(lines.length).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/refused \(\d+ reasons?\); nothing was written/);
    for (const l of lines) expect(l.match(/\[REFUSED_/g)!.length).toBe(1);
  });
});
