/**
 * Fixes that add variables (issue #12.4), on a real gcc build of test/fixtures/builder/added_variables:
 * the plan carries each new variable (zero-initialised counter, mutex, initialised table, table of
 * function pointers with relocations) as writable data and the new constants as read-only data; the
 * signed package applies to the running old build, whose four threads then share the variables;
 * `verify` has no finding (the variables' area is read-write, not executable); remove frees them and
 * a second apply starts from their initial values again.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { VerifierCaches } from '../../src/guard/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { readRecordFromMappings } from '../../src/patch/engine/index.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { applyPackageFile, removeFromProcesses } from '../../src/patch/updater/index.js';
import { openProcess, type Mapping } from '../../src/process/index.js';
import { ask, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { findingsOf, summary } from '../guard/helpers.js';
import { buildPair, RECOMMENDED } from './pairs.js';

killTargetsAfterAll();
const run = promisify(execFile);

function mappings(pid: number): Mapping[] {
  const p = openProcess(pid);
  try {
    return p.enumerateMappings();
  } finally {
    p.close();
  }
}

async function build(flags = RECOMMENDED) {
  const pair = await buildPair('added_variables', { flags });
  return { pair, result: buildPatch(new Uint8Array(readFileSync(pair.old)), new Uint8Array(readFileSync(pair.new)), { oldName: pair.old }) };
}

describe('fixes that add variables', () => {
  it('the plan carries every new variable as writable data, constants as read-only data', async () => {
    const { result } = await build();
    expect(result.plan.functions.map((f) => f.name)).toEqual(['describe']);
    const byName = new Map(result.plan.data.map((d) => [d.name, d]));
    for (const v of ['calls (prog.c)', 'lock (prog.c)', 'weights (prog.c)', 'ops (prog.c)']) expect(byName.get(v)?.writable, v).toBe(true);
    for (const c of ['banner (prog.c)', 'names (prog.c)']) expect(byName.get(c)?.writable, c).toBeUndefined();
    expect([...byName.get('calls (prog.c)')!.bytes]).toEqual(new Array(8).fill(0));
    expect(new Int32Array(byName.get('weights (prog.c)')!.bytes.slice().buffer)).toEqual(Int32Array.of(3, 5, 7, 11));
    // Two function pointers, to twice and thrice carried in the new code.
    expect(byName.get('ops (prog.c)')!.relocations.map((r) => [r.offset, r.type, r.target.kind])).toEqual([[0, 'abs64', 'local'], [8, 'abs64', 'local']]);
    expect(result.report.data.filter((d) => d.writable).map((d) => d.name).sort()).toEqual(['calls (prog.c)', 'lock (prog.c)', 'ops (prog.c)', 'weights (prog.c)']);
  });

  const NON_PIE = ['-O2', '-no-pie', '-fno-pie', '-fpatchable-function-entry=7,5', '-Wl,--emit-relocs'];
  for (const flags of [RECOMMENDED, NON_PIE]) {
    it(`applied to the running build: threads share the variables, verify is clean, remove frees them [${flags.join(' ')}]`, async () => {
      const { pair, result } = await build(flags);
      const dir = mkdtempSync(join(tmpdir(), 'hotpatch-vars-'));
      const key = writeKeyFiles(join(dir, 'ops.key'), { comment: 'ops' });
      const pkgPath = join(dir, 'vars.hpk');
      const pkg = signPackage(createPackage(result.plan), readFileSync(join(dir, 'ops.key'), 'utf8'));
      writeFileSync(pkgPath, encodePackage(pkg));
      const t = await startTarget(pair.old, []);
      try {
        await ask(t, '1', /^value 1\n/);
        const apply = async () => {
          const r = await applyPackageFile(pkgPath, { pids: [t.pid], trustFiles: [key.publicKeyFile] });
          expect(r.results[0]?.status, JSON.stringify(r.results)).toBe('patched');
        };
        await apply();
        await ask(t, '1', /^one calls 1 weight 6 op 3 fixed\n/);
        // Four threads, 1000 calls each, all through the one lock and counter.
        await ask(t, 'run 1000', /^ran\n/);
        await ask(t, '2', /^two calls 4002 weight 1008 op 4 fixed\n/);

        const record = readRecordFromMappings(t.pid, mappings(t.pid))!;
        const vars = record.patches[0]!.vars!;
        expect(vars).toBeDefined();
        const arena = record.arenas.find((a) => a.kind === 'vars')!;
        expect(arena.prot).toBe('rw-');
        const m = mappings(t.pid).find((x) => x.start <= vars.start && vars.end <= x.end)!;
        expect([m.protection.read, m.protection.write, m.protection.execute]).toEqual([true, true, false]);
        expect(record.arenas.find((a) => a.kind === 'code')!.prot).toBe('r-x');

        const findings = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [key.publicKeyFile] });
        expect(findings, summary(findings)).toEqual([]);
        // The same through `hotpatch verify` (the built CLI, as users run it): exit 0, no finding.
        const { stdout } = await run('node', [join(REPO_ROOT, 'dist/src/cli/main.js'), 'verify', '--pid', String(t.pid), '--trust', key.publicKeyFile, '--json']);
        expect(JSON.parse(stdout)).toMatchObject({ checked: { processes: 1 }, findings: [] });

        const removed = await removeFromProcesses(pkg.id, { pids: [t.pid] });
        expect(removed.results[0]?.status, JSON.stringify(removed.results)).toBe('removed');
        await ask(t, '1', /^value 1\n/);
        // Freed with the patch: applied again, the variables start from their initial values.
        await apply();
        await ask(t, '3', /^three calls 1 weight 12 op 9 fixed\n/);
      } finally {
        await t.kill();
      }
    });
  }
});
