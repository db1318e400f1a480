/**
 * A stripped non-PIE executable, as a distribution installs it (issue #15): built with Debian's
 * hardening flags and -no-pie (no hotpatch flags, no --emit-relocs), installed stripped, its
 * symbols in a separate debug file under .build-id. `hotpatch build` takes the stripped file and
 * the debug directory, `apply --all` patches the running process (absolute addresses of the
 * running copy's data and code bound by value), `remove --all` brings the old code back.
 */
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { ask, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { installDebugFile, sh } from './debian-helpers.js';
import { runCli } from '../helpers/cli.js';
import { buildPair, DEB_HARDENING } from './pairs.js';

killTargetsAfterAll();

const FLAGS = ['-O2', '-no-pie', '-fno-pie', ...DEB_HARDENING];
const CASES = [
  // counter/calls are the running copy's globals, reached by absolute address in the non-PIE code.
  { scenario: 'basic', input: '5', before: 'answer 16 counter 100 calls 0\n', after: 'answer 17 counter 101 calls 1\n', removed: 'answer 16 counter 102 calls 2\n', functions: ['compute'] },
  // A new string literal is carried as data; the old one stays in the running .rodata.
  { scenario: 'strings', input: '-3', before: 'value -3 is negative\n', after: 'value -3 is below zero (fixed)\n', removed: 'value -3 is negative\n', functions: ['label'] },
];

describe('a stripped non-PIE executable with symbols from its debug file', () => {
  const dir = join(tmpdir(), `hotpatch-stripped-exe-${process.pid}`);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const c of CASES) {
    it(`${c.scenario}: build from the stripped file and the .build-id directory, apply --all, remove --all`, async () => {
      const pair = await buildPair(c.scenario, { flags: FLAGS });
      const root = join(dir, c.scenario);
      mkdirSync(join(root, 'bin'), { recursive: true });
      const installed = join(root, 'bin', c.scenario);
      await sh('strip', ['--strip-all', '-o', installed, pair.old]);
      const elf = parseElf(new Uint8Array(readFileSync(installed)));
      expect(elf.header.type, 'ET_EXEC').toBe(2);
      expect(elf.symbols.length).toBe(0);
      const dbg = join(root, 'usr/lib/debug');
      await installDebugFile(installed, pair.old, dbg);
      const fixed = join(root, 'fixed');
      copyFileSync(pair.new, fixed);

      const pkg = join(root, 'fix.hpk');
      const b = await runCli(['build', '--old', installed, '--new', fixed, '--debug-dir', dbg, '-o', pkg, '--json']);
      expect(b.code, b.stderr).toBe(0);
      const built = JSON.parse(b.stdout) as { id: string; functions: { name: string }[] };
      expect(built.functions.map((f) => f.name)).toEqual(c.functions);

      const t = await startTarget(installed);
      try {
        expect(await ask(t, c.input, /.*\n/)).toBe(c.before);
        const a = await runCli(['apply', pkg, '--all', '--allow-unsigned', '--json']);
        expect(a.code, a.stderr).toBe(0);
        const results = (JSON.parse(a.stdout) as { results: { pid: number; status: string }[] }).results;
        expect(results.filter((x) => x.pid === t.pid).map((x) => x.status)).toEqual(['patched']);
        expect(await ask(t, c.input, /.*\n/)).toBe(c.after);
        const rm = await runCli(['remove', built.id, '--all', '--json']);
        expect(rm.code, rm.stderr).toBe(0);
        expect(await ask(t, c.input, /.*\n/)).toBe(c.removed);
      } finally {
        await t.kill();
      }
    }, 120_000);
  }
});
