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
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { debugFilePath, parseElf } from '../../src/elf/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { fetchDebianSource } from '../helpers/debian-source.js';
import { FIXTURES, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const FIX = JSON.parse(readFileSync(join(FIXTURES, 'debian/zlib/CVE-2022-37434.json'), 'utf8')) as { file: string; vulnerable: string; fixed: string };
const ROOT = join(tmpdir(), 'hotpatch-debian-zlib');
const SOURCES = ['adler32.c', 'crc32.c', 'deflate.c', 'infback.c', 'inffast.c', 'inflate.c', 'inftrees.c', 'trees.c', 'zutil.c', 'compress.c', 'uncompr.c', 'gzclose.c', 'gzlib.c', 'gzread.c', 'gzwrite.c'];
/** What debian/rules adds to dpkg-buildflags for amd64, and what the configure script uses for the shared library. */
const RULES_CFLAGS = ['-Wall', '-D_REENTRANT', '-O3', '-DUNALIGNED_OK', '-fPIC', '-DPIC', '-D_LARGEFILE64_SOURCE=1', '-DHAVE_HIDDEN'];
/** dpkg >= 1.22 adds it on amd64 (hardening=+branch); bookworm's dpkg does not yet. */
const CF_PROTECTION = '-fcf-protection';
const READY = ['-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];

killTargetsAfterAll();

async function sh(cmd: string, args: string[], cwd?: string, env?: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await run(cmd, args, { cwd, env: env ?? process.env, maxBuffer: 64 << 20 });
  return stdout;
}

interface Flavour {
  label: string;
  ready: boolean;
}
const FLAVOURS: Flavour[] = [
  { label: 'Debian flags (dpkg-buildflags, -O3, hardening, no --emit-relocs)', ready: false },
  { label: 'hotpatch-ready flags on top', ready: true },
];

/** Builds libz.so.1.2.13 of one variant and flavour (cached); returns its directory. */
async function buildLib(src: string, variant: 'old' | 'new', f: Flavour): Promise<{ lib: string; millis: number }> {
  const env = { ...process.env, DEB_BUILD_MAINT_OPTIONS: 'hardening=+all' };
  const cflags = [...(await sh('dpkg-buildflags', ['--get', 'CFLAGS'], src, env)).trim().split(/\s+/), ...(await sh('dpkg-buildflags', ['--get', 'CPPFLAGS'], src, env)).trim().split(/\s+/)];
  const ldflags = (await sh('dpkg-buildflags', ['--get', 'LDFLAGS'], src, env)).trim().split(/\s+/);
  const base = [...cflags.filter((x) => !x.startsWith('-ffile-prefix-map')), ...RULES_CFLAGS, CF_PROTECTION, ...(f.ready ? READY : [])];
  const key = createHash('sha256').update(JSON.stringify({ variant, base, ldflags, FIX })).digest('hex').slice(0, 12);
  const dir = join(ROOT, `${variant}-${f.ready ? 'ready' : 'deb'}-${key}`);
  const lib = join(dir, 'libz.so.1.2.13');
  if (existsSync(lib)) return { lib, millis: 0 };
  const t0 = Date.now();
  // Each build in its own directory, recorded as "." (as dpkg-buildflags' -ffile-prefix-map does),
  // so old and new build at once and still name their sources alike.
  const work = join(ROOT, `work-${variant}-${f.ready ? 'ready' : 'deb'}`);
  const flags = [...base, `-ffile-prefix-map=${work}=.`];
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  for (const s of [...SOURCES, ...readdirSync(src).filter((x) => x.endsWith('.h')), 'zlib.map']) cpSync(join(src, s), join(work, s));
  if (variant === 'old') {
    const p = join(work, FIX.file);
    const text = readFileSync(p, 'utf8');
    if (!text.includes(FIX.fixed)) throw new Error(`${FIX.file} of the source package does not hold the fixed text of the CVE: update test/fixtures/debian/zlib`);
    writeFileSync(p, text.replace(FIX.fixed, FIX.vulnerable));
  }
  await sh('gcc', [...flags, '-shared', '-Wl,-soname,libz.so.1,--version-script,zlib.map', ...ldflags, '-o', 'libz.so.1.2.13', ...SOURCES], work);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  renameSync(join(work, 'libz.so.1.2.13'), lib);
  return { lib, millis: Date.now() - t0 };
}

/**
 * Installs `lib` stripped under its real name with the soname link, like the package does (dh_strip:
 * --strip-unneeded; a build with --emit-relocs keeps symbols its relocations name that way, so it
 * is stripped with --strip-all).
 */
async function install(lib: string, into: string, ready: boolean, name = 'libz.so.1.2.13'): Promise<string> {
  mkdirSync(into, { recursive: true });
  const real = join(into, name);
  await sh('strip', [ready ? '--strip-all' : '--strip-unneeded', '--remove-section=.comment', '-o', real, lib]);
  symlinkSync(name, join(into, 'libz.so.1'));
  return real;
}

async function hotpatch(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { maxBuffer: 64 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

async function ask(t: Target, line: string, answer: RegExp): Promise<string> {
  const before = t.output().length;
  t.child.stdin!.write(`${line}\n`);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const got = t.output().slice(before);
    const m = answer.exec(got);
    if (m) return m[0];
    if (Date.now() > deadline) throw new Error(`process ${t.pid} answered ${JSON.stringify(got)} to ${JSON.stringify(line)}, expected ${answer}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const source = await fetchDebianSource('zlib', ROOT);
const skip = 'skip' in source ? source.skip : undefined;
if (skip) console.warn(`test/builder/debian.test.ts skipped: ${skip}`);

describe.skipIf(skip !== undefined)('a Debian library, stripped as installed: zlib 1.2.13 and the fix of CVE-2022-37434', () => {
  const src = 'dir' in source ? source.dir : '';
  const run0 = join(ROOT, `run-${process.pid}`);
  afterAll(() => rmSync(run0, { recursive: true, force: true }));
  const libs = new Map<string, string>();
  // The four builds, two at a time (2 cores): each is one gcc run over 15 files.
  beforeAll(async () => {
    const jobs = FLAVOURS.flatMap((f) => (['old', 'new'] as const).map((v) => ({ v, f })));
    const next = async (): Promise<void> => {
      for (let j = jobs.shift(); j; j = jobs.shift()) await lib(j.v, j.f);
    };
    await Promise.all([next(), next()]);
  }, 600_000);
  const lib = async (variant: 'old' | 'new', f: Flavour): Promise<string> => {
    const k = `${variant}-${f.ready}`;
    let p = libs.get(k);
    if (!p) {
      const b = await buildLib(src, variant, f);
      if (b.millis > 0) console.log(`built ${variant} libz.so.1.2.13 (${f.label}) in ${(b.millis / 1000).toFixed(1)} s`);
      p = b.lib;
      libs.set(k, p);
    }
    return p;
  };

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
    const id = parseElf(new Uint8Array(readFileSync(stripped))).buildId!;
    const dbgFile = debugFilePath(dbg, id);
    mkdirSync(join(dbgFile, '..'), { recursive: true });
    await sh('objcopy', ['--only-keep-debug', o, dbgFile]);
    const client = join(run0, 'client');
    await sh('gcc', ['-O2', '-pthread', '-I', src, '-o', client, join(FIXTURES, 'debian/zlib/client.c'), join(libDir, 'libz.so.1')]);

    // The stripped file alone: the builder says how to get symbols.
    const none = await hotpatch(['build', '--old', stripped, '--new', n, '-o', join(run0, 'none.hpk'), '--debug-dir', join(run0, 'nowhere')]);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/no symbol table.*--old-debug.*\/usr\/lib\/debug\/\.build-id\/[0-9a-f]{2}\/[0-9a-f]+\.debug.*\[BUILD_NO_SYMTAB\]/s);

    const pkg = join(run0, 'deb.hpk');
    const b = await hotpatch(['build', '--old', stripped, '--new', n, '-o', pkg, '--debug-dir', dbg, '--json']);
    expect(b.code, b.stderr).toBe(0);
    expect((JSON.parse(b.stdout) as { functions: { name: string }[] }).functions.map((x) => x.name)).toEqual(['inflate']);
    const readyPkg = join(run0, 'ready.hpk');
    const b2 = await hotpatch(['build', '--old', otherStripped, '--old-debug', ro, '--new', rn, '-o', readyPkg, '--json']);
    expect(b2.code, b2.stderr).toBe(0);

    const env = (dir: string) => ({ ...process.env, LD_LIBRARY_PATH: dir });
    const procs = [await startTarget(client, [], { env: env(libDir) }), await startTarget(client, [], { env: env(libDir) }), await startTarget(client, [], { env: env(libDir) })];
    const other = await startTarget(client, [], { env: env(otherDir) });
    const all = [...procs, other];
    try {
      for (const t of all) expect(await ask(t, 'n', /ok -?\d+\n/)).toBe('ok 0\n');

      // Named explicitly, the process running another build is refused, and the advice is not to retry.
      const wrong = await hotpatch(['apply', pkg, '--pid', String(other.pid), '--allow-unsigned']);
      expect(wrong.code).toBe(3);
      expect(wrong.stderr).toMatch(/running the same command again will not change that/);
      expect(wrong.stderr).not.toMatch(/run the same command again/);
      const a = await hotpatch(['apply', pkg, '--all', '--allow-unsigned', '--json']);
      expect(a.code, a.stderr).toBe(0);
      const results = (JSON.parse(a.stdout) as { results: { pid: number; status: string; code?: string; reason?: string }[] }).results;
      const mine = results.filter((x) => all.some((t) => t.pid === x.pid));
      expect(mine.filter((x) => x.status === 'patched').map((x) => x.pid).sort()).toEqual(procs.map((t) => t.pid).sort());
      const skipped = mine.find((x) => x.pid === other.pid)!;
      expect(skipped).toMatchObject({ status: 'skipped', code: 'OTHER_BUILD' });
      expect(skipped.reason).toMatch(/runs another build of libz\.so\.1\.2\.13 \(.*libz\.so\.1\.2\.12, build-id [0-9a-f]+/);
      const a2 = await hotpatch(['apply', readyPkg, '--all', '--allow-unsigned', '--json']);
      expect(a2.code, a2.stderr).toBe(0);
      const r2 = (JSON.parse(a2.stdout) as { results: { pid: number; status: string }[] }).results;
      expect(r2.find((x) => x.pid === other.pid)?.status).toBe('patched');

      // The CVE's input crashes the vulnerable inflate(); the patched one skips the overlong extra field.
      for (const t of all) expect(await ask(t, 'x', /safe -?\d+\n/)).toBe('safe 0\n');
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/calls [1-9]\d* failures 0\n/);

      const pid = (JSON.parse(b.stdout) as { id: string }).id;
      const rid = (JSON.parse(b2.stdout) as { id: string }).id;
      for (const id2 of [pid, rid]) {
        const rm = await hotpatch(['remove', id2, '--all', '--json']);
        expect(rm.code, rm.stderr).toBe(0);
      }
      const listed = await hotpatch(['list', '--pid', String(procs[0]!.pid), '--json']);
      const states = (JSON.parse(listed.stdout) as { processes: { patches: { id: string; state: string; sites: { state: string }[] }[] }[] }).processes[0]!.patches;
      // Removed: the record keeps it as retired, or is gone once nothing is applied any more.
      const kept = states.find((x) => x.id === pid);
      if (kept) expect(kept, listed.stdout).toMatchObject({ state: 'retired', sites: [{ state: 'removed' }] });
      expect(states.filter((x) => x.state !== 'retired'), listed.stdout).toEqual([]);
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/failures 0\n/);
    } finally {
      for (const t of all) await t.kill();
    }
  }, 300_000);
});
