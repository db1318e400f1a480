/**
 * A real distribution library, end to end (issue #15): Debian's zlib source package, built twice
 * like debian/rules builds it (dpkg-buildflags, -O3, hardening, shared, no --emit-relocs) and with
 * the hotpatch-ready flags, before and after the one-function fix of CVE-2022-37434 (inflate()).
 * The running file is the stripped library under its real name (libz.so.1.2.13, loaded through the
 * soname link libz.so.1); its symbols come from a separate debug file found by build-id, or from an
 * unstripped copy. Each package must hold exactly `inflate`; it is applied with `--all` to several
 * running processes (another build of the library is reported as such), fixes the crash live, and is
 * removed. See test/fixtures/debian/README.md.
 *
 * The source is fetched at test time through a private apt configuration (a deb-src line for the
 * distribution's archive, in the test's tmp dir: the machine's apt sources are not touched); without
 * apt-get source / dpkg-source or the archive, the file is skipped with the reason. Builds are cached
 * under the tmp dir (a cold run compiles 4 × 15 files: about 25 s on 2 cores).
 */
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { ask, FIXTURES, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { buildOnce, debianFlags, installDebugFile, installStripped, libraryBuilds, READY, sh, type Flavour } from './debian-helpers.js';
import { fetchDebianSource } from '../helpers/debian-source.js';
import { runCli } from '../helpers/cli.js';
const FIX = JSON.parse(readFileSync(join(FIXTURES, 'debian/zlib/CVE-2022-37434.json'), 'utf8')) as { file: string; vulnerable: string; fixed: string };
const ROOT = join(tmpdir(), 'hotpatch-debian-zlib');
const SOURCES = ['adler32.c', 'crc32.c', 'deflate.c', 'infback.c', 'inffast.c', 'inflate.c', 'inftrees.c', 'trees.c', 'zutil.c', 'compress.c', 'uncompr.c', 'gzclose.c', 'gzlib.c', 'gzread.c', 'gzwrite.c'];
/** What debian/rules adds to dpkg-buildflags for amd64, and what the configure script uses for the shared library. */
const RULES_CFLAGS = ['-Wall', '-D_REENTRANT', '-O3', '-DUNALIGNED_OK', '-fPIC', '-DPIC', '-D_LARGEFILE64_SOURCE=1', '-DHAVE_HIDDEN'];
/** dpkg >= 1.22 adds it on amd64 (hardening=+branch); bookworm's dpkg does not yet. */
const CF_PROTECTION = '-fcf-protection';

killTargetsAfterAll();

const FLAVOURS: Flavour[] = [
  { label: 'Debian flags (dpkg-buildflags, -O3, hardening, no --emit-relocs)', ready: false },
  { label: 'hotpatch-ready flags on top', ready: true },
];

/** Builds libz.so.1.2.13 of one variant and flavour (cached); returns its directory. */
async function buildLib(src: string, variant: 'old' | 'new', f: Flavour): Promise<{ lib: string; millis: number }> {
  const { cflags, ldflags } = await debianFlags(src, { ...process.env, DEB_BUILD_MAINT_OPTIONS: 'hardening=+all' });
  const base = [...cflags, ...RULES_CFLAGS, CF_PROTECTION, ...(f.ready ? READY : [])];
  return buildOnce(ROOT, `${variant}-${f.ready ? 'ready' : 'deb'}`, { variant, base, ldflags, FIX }, 'libz.so.1.2.13', async (work, prefixMap) => {
    for (const s of [...SOURCES, ...readdirSync(src).filter((x) => x.endsWith('.h')), 'zlib.map']) cpSync(join(src, s), join(work, s));
    if (variant === 'old') {
      const p = join(work, FIX.file);
      const text = readFileSync(p, 'utf8');
      if (!text.includes(FIX.fixed)) throw new Error(`${FIX.file} of the source package does not hold the fixed text of the CVE: update test/fixtures/debian/zlib`);
      writeFileSync(p, text.replace(FIX.fixed, FIX.vulnerable));
    }
    await sh('gcc', [...base, prefixMap, '-shared', '-Wl,-soname,libz.so.1,--version-script,zlib.map', ...ldflags, '-o', 'libz.so.1.2.13', ...SOURCES], work);
  });
}

const install = (lib: string, into: string, ready: boolean, name = 'libz.so.1.2.13') => installStripped(lib, into, { ready, name, soname: 'libz.so.1' });

const source = await fetchDebianSource('zlib', ROOT);
const skip = 'skip' in source ? source.skip : undefined;
if (skip) console.warn(`test/builder/debian.test.ts skipped: ${skip}`);

describe.skipIf(skip !== undefined)('a Debian library, stripped as installed: zlib 1.2.13 and the fix of CVE-2022-37434', () => {
  const src = 'dir' in source ? source.dir : '';
  const run0 = join(ROOT, `run-${process.pid}`);
  afterAll(() => rmSync(run0, { recursive: true, force: true }));
  const lib = libraryBuilds('libz.so.1.2.13', FLAVOURS, (v, f) => buildLib(src, v, f));

  for (const f of FLAVOURS) {
    it(`${f.label}: the package holds exactly inflate, built from the stripped file and its debug symbols`, async () => {
      const [o, n] = [await lib('old', f), await lib('new', f)];
      const stripped = await install(o, join(run0, `plan-${f.ready}`), f.ready);
      expect(parseElf(new Uint8Array(readFileSync(stripped))).symbols.length).toBe(0);
      const r = buildPatch(new Uint8Array(readFileSync(stripped)), new Uint8Array(readFileSync(n)), {
        oldName: stripped,
        newName: n,
        oldDebug: { bytes: new Uint8Array(readFileSync(o)), name: o },
      });
      console.log(`${f.label}: ${r.report.stats.oldFunctions} functions, package ${r.plan.functions.map((x) => x.name).join(', ')} (entry ${r.plan.functions[0]?.entry.kind}), built in ${r.report.stats.millis} ms`);
      expect(r.plan.functions.map((x) => x.name)).toEqual(['inflate']);
      expect(r.plan.target.name).toBe('libz.so.1.2.13');
      expect(r.plan.data.filter((d) => d.name.startsWith('jump table')).map((d) => d.name)).toEqual(['jump table of inflate']);
    }, 300_000);
  }

  it('apply --all patches every process of the stripped library (another build is listed as such), the CVE input is harmless, remove --all restores', async () => {
    const deb = FLAVOURS[0]!;
    const ready = FLAVOURS[1]!;
    const [o, n, ro, rn] = [await lib('old', deb), await lib('new', deb), await lib('old', ready), await lib('new', ready)];
    const libDir = join(run0, 'usr/lib');
    const otherDir = join(run0, 'opt/lib');
    const stripped = await install(o, libDir, false);
    // Another build of the library under another version's name, reached through the same soname.
    const otherStripped = await install(ro, otherDir, true, 'libz.so.1.2.12');
    // The distribution's debug package: the unstripped symbols under .build-id.
    const dbg = join(run0, 'usr/lib/debug');
    await installDebugFile(stripped, o, dbg);
    const client = join(run0, 'client');
    await sh('gcc', ['-O2', '-pthread', '-I', src, '-o', client, join(FIXTURES, 'debian/zlib/client.c'), join(libDir, 'libz.so.1')]);

    // The stripped file alone: the builder says how to get symbols.
    const none = await runCli(['build', '--old', stripped, '--new', n, '-o', join(run0, 'none.hpk'), '--debug-dir', join(run0, 'nowhere')]);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/no symbol table.*--old-debug.*\/usr\/lib\/debug\/\.build-id\/[0-9a-f]{2}\/[0-9a-f]+\.debug.*\[BUILD_NO_SYMTAB\]/s);

    const pkg = join(run0, 'deb.hpk');
    const b = await runCli(['build', '--old', stripped, '--new', n, '-o', pkg, '--debug-dir', dbg, '--json']);
    expect(b.code, b.stderr).toBe(0);
    expect((JSON.parse(b.stdout) as { functions: { name: string }[] }).functions.map((x) => x.name)).toEqual(['inflate']);
    const readyPkg = join(run0, 'ready.hpk');
    const b2 = await runCli(['build', '--old', otherStripped, '--old-debug', ro, '--new', rn, '-o', readyPkg, '--json']);
    expect(b2.code, b2.stderr).toBe(0);

    const env = (dir: string) => ({ ...process.env, LD_LIBRARY_PATH: dir });
    const procs = [await startTarget(client, [], { env: env(libDir) }), await startTarget(client, [], { env: env(libDir) }), await startTarget(client, [], { env: env(libDir) })];
    const other = await startTarget(client, [], { env: env(otherDir) });
    const all = [...procs, other];
    try {
      for (const t of all) expect(await ask(t, 'n', /ok -?\d+\n/)).toBe('ok 0\n');

      // Named explicitly, the process running another build is refused, and the advice is not to retry.
      const wrong = await runCli(['apply', pkg, '--pid', String(other.pid), '--allow-unsigned']);
      expect(wrong.code).toBe(3);
      expect(wrong.stderr).toMatch(/running the same command again will not change that/);
      expect(wrong.stderr).not.toMatch(/run the same command again/);
      const a = await runCli(['apply', pkg, '--all', '--allow-unsigned', '--json']);
      expect(a.code, a.stderr).toBe(0);
      const results = (JSON.parse(a.stdout) as { results: { pid: number; status: string; code?: string; reason?: string }[] }).results;
      const mine = results.filter((x) => all.some((t) => t.pid === x.pid));
      expect(mine.filter((x) => x.status === 'patched').map((x) => x.pid).sort()).toEqual(procs.map((t) => t.pid).sort());
      const skipped = mine.find((x) => x.pid === other.pid)!;
      expect(skipped).toMatchObject({ status: 'skipped', code: 'OTHER_BUILD' });
      expect(skipped.reason).toMatch(/runs another build of libz\.so\.1\.2\.13 \(.*libz\.so\.1\.2\.12, build-id [0-9a-f]+/);
      const a2 = await runCli(['apply', readyPkg, '--all', '--allow-unsigned', '--json']);
      expect(a2.code, a2.stderr).toBe(0);
      const r2 = (JSON.parse(a2.stdout) as { results: { pid: number; status: string }[] }).results;
      expect(r2.find((x) => x.pid === other.pid)?.status).toBe('patched');

      // The CVE's input crashes the vulnerable inflate(); the patched one skips the overlong extra field.
      for (const t of all) expect(await ask(t, 'x', /safe -?\d+\n/)).toBe('safe 0\n');
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/calls [1-9]\d* failures 0\n/);

      const pid = (JSON.parse(b.stdout) as { id: string }).id;
      const rid = (JSON.parse(b2.stdout) as { id: string }).id;
      for (const id2 of [pid, rid]) {
        const rm = await runCli(['remove', id2, '--all', '--json']);
        expect(rm.code, rm.stderr).toBe(0);
      }
      const listed = await runCli(['list', '--pid', String(procs[0]!.pid), '--json']);
      const states = (JSON.parse(listed.stdout) as { processes: { patches: { id: string; state: string; sites: { state: string }[] }[] }[] }).processes[0]!.patches;
      // Removed: the record keeps it as retired, or is gone once nothing is applied any more.
      const kept = states.find((x) => x.id === pid);
      if (kept) expect(kept, listed.stdout).toMatchObject({ state: 'retired', sites: [{ state: 'removed' }] });
      expect(states.filter((x) => x.state !== 'retired'), listed.stdout).toEqual([]);
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/failures 0\n/);
    } finally {
      for (const t of all) await t.kill();
    }
  }, 900_000);
});
