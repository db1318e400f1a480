/**
 * A second distribution library, end to end (issue #15): Debian's expat source package (bookworm,
 * 2.5.0 with Debian's security patches), built like debian/rules and upstream's configure build the
 * shared library (dpkg-buildflags -O2 with hardening, -fvisibility=hidden, -Bsymbolic-functions,
 * no --emit-relocs) and with the hotpatch-ready flags on top, before and after Debian's patch for
 * CVE-2024-45490 (debian/patches/CVE-2024-45490.patch: XML_ParseBuffer rejects a negative length).
 * Only the library is built (xmlparse.c, xmlrole.c, xmltok.c: no docs, tests or xmlwf), the four
 * builds two at a time. The running file is the stripped libexpat.so.1.8.10 reached through the
 * soname link libexpat.so.1, with symbols from a separate debug file found by build-id or from the
 * unstripped copy. Each package must hold exactly XML_ParseBuffer and the 19 functions after it in
 * xmlparse.c whose code holds a line number (assert(), entity accounting) that the patch's 6 added
 * lines moved — nothing else differs in them, and no other function enters; `apply --all` patches every
 * process mapping that build — also under another file name — and lists the process mapping
 * another build of libexpat.so.1 (under an unrelated file name) as "runs another build".
 * See test/fixtures/debian/README.md.
 */
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { ask, FIXTURES, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { buildOnce, debianFlags, installDebugFile, installStripped, libraryBuilds, READY, sh, type Flavour, type Variant } from './debian-helpers.js';
import { fetchDebianSource } from '../helpers/debian-source.js';
import { runCli } from '../helpers/cli.js';

const ROOT = join(tmpdir(), 'hotpatch-debian-expat');
const FIXTURE = join(FIXTURES, 'debian/expat');
const NAME = 'libexpat.so.1.8.10';
const SONAME = 'libexpat.so.1';
const SOURCES = ['xmlparse.c', 'xmlrole.c', 'xmltok.c'];
const PATCH = 'debian/patches/CVE-2024-45490.patch';
/** debian/rules adds -Wall and -Bsymbolic-functions; configure adds AM_CFLAGS/AM_CPPFLAGS; libtool -fPIC -DPIC. */
const RULES_CFLAGS = ['-Wall', '-Wextra', '-fexceptions', '-fno-strict-aliasing', '-fvisibility=hidden', '-DHAVE_EXPAT_CONFIG_H', '-DXML_ENABLE_VISIBILITY=1', '-fPIC', '-DPIC'];
const RULES_LDFLAGS = ['-Wl,-Bsymbolic-functions'];
/**
 * The functions of xmlparse.c after the fix whose code holds a `__LINE__` (assert() and the
 * entity-accounting calls): the patch adds 6 lines, so each of them loads another line number,
 * and the package must carry them too (checked below: that constant is their only difference).
 */
const LINE_SHIFTED = [
  'XML_StopParser', 'XML_GetParsingStatus', 'externalEntityInitProcessor2', 'doContent', 'doCdataSection', 'doIgnoreSection', 'processXmlDecl',
  'entityValueInitProcessor', 'externalParEntProcessor', 'doProlog', 'epilogProcessor', 'processEntity', 'internalEntityProcessor',
  'storeAttributeValue', 'appendAttributeValue', 'storeEntityValue', 'accountingGetCurrentAmplification.part.0', 'accountingDiffTolerated.part.0',
  'entityTrackingReportStats',
];
const PATCH_LINES = 6;
/** expat's error code for a negative length (XML_ERROR_INVALID_ARGUMENT). */
const INVALID_ARGUMENT = 41;

killTargetsAfterAll();

const FLAVOURS: Flavour[] = [
  { label: 'Debian flags (dpkg-buildflags -O2, hardening, -Bsymbolic-functions, no --emit-relocs)', ready: false },
  { label: 'hotpatch-ready flags on top', ready: true },
];

/** The four lines of code the patch adds to XML_ParseBuffer (with a blank line on each side). */
const FIX_CODE = '  if (len < 0) {\n    parser->m_errorCode = XML_ERROR_INVALID_ARGUMENT;\n    return XML_STATUS_ERROR;\n  }\n';

/**
 * Builds libexpat.so.1.8.10 of one variant and flavour. old: Debian's CVE-2024-45490 patch
 * reverted; old-same-lines: vulnerable too, the fix's lines left blank (no line number moves).
 */
async function buildLib(src: string, variant: Variant | 'old-same-lines', f: Flavour): Promise<{ lib: string; millis: number }> {
  const { cflags, ldflags } = await debianFlags(src);
  const flags = [...cflags, ...RULES_CFLAGS, ...(f.ready ? READY : [])];
  const patch = readFileSync(join(src, PATCH), 'utf8');
  const config = readFileSync(join(FIXTURE, 'expat_config.h'), 'utf8');
  return buildOnce(ROOT, `${variant}-${f.ready ? 'ready' : 'deb'}`, { variant, flags, ldflags, patch, config }, NAME, async (work, prefixMap) => {
    const lib = join(src, 'expat/lib');
    for (const s of readdirSync(lib).filter((x) => /\.[ch]$/.test(x))) cpSync(join(lib, s), join(work, s));
    cpSync(join(FIXTURE, 'expat_config.h'), join(work, 'expat_config.h'));
    // dpkg-source applied the patch; the vulnerable build takes it out again.
    if (variant === 'old') await sh('patch', ['-R', '-p3', '-s', '-i', join(src, PATCH)], work);
    if (variant === 'old-same-lines') {
      const text = readFileSync(join(work, 'xmlparse.c'), 'utf8');
      if (text.split(FIX_CODE).length !== 2) throw new Error('xmlparse.c of the source package does not hold the fix of CVE-2024-45490 once: update the test');
      writeFileSync(join(work, 'xmlparse.c'), text.replace(FIX_CODE, '\n'.repeat(4)));
    }
    await sh('gcc', [...flags, prefixMap, '-I.', '-shared', ...RULES_LDFLAGS, ...ldflags, `-Wl,-soname,${SONAME}`, '-o', NAME, ...SOURCES], work);
  });
}

/**
 * The instructions of `fn` in `lib` with addresses and rip-relative displacements blanked out
 * (the code after the fix moved): what is left differs only where the code means something else.
 */
async function normalisedCode(lib: string, fn: string): Promise<string[]> {
  const out = await sh('objdump', ['-d', '--no-show-raw-insn', `--disassemble=${fn}`, lib]);
  return out
    .slice(out.indexOf(`<${fn}>:`))
    .split('\n')
    .slice(1)
    .filter((l) => /^\s+[0-9a-f]+:/.test(l))
    .map((l) => l.replace(/^\s+[0-9a-f]+:\s*/, '').replace(/#.*/, '').replace(/[0-9a-f]+ <[^>]*>/g, 'ADDR').replace(/-?0x[0-9a-f]+\(%rip\)/g, 'RIP').trim());
}

const source = await fetchDebianSource('expat', ROOT);
const skip = 'skip' in source ? source.skip : undefined;
if (skip) console.warn(`test/builder/debian-expat.test.ts skipped: ${skip}`);

describe.skipIf(skip !== undefined)('a Debian library, stripped as installed: expat 2.5.0 and the fix of CVE-2024-45490', () => {
  const src = 'dir' in source ? source.dir : '';
  const run0 = join(ROOT, `run-${process.pid}`);
  afterAll(() => rmSync(run0, { recursive: true, force: true }));
  const lib = libraryBuilds(NAME, FLAVOURS, (v, f) => buildLib(src, v, f));

  for (const f of FLAVOURS) {
    it(`${f.label}: the package holds exactly XML_ParseBuffer and the functions with a moved __LINE__, built from the stripped file and its debug symbols`, async () => {
      const [o, n] = [await lib('old', f), await lib('new', f)];
      const stripped = await installStripped(o, join(run0, `plan-${f.ready}`), { ready: f.ready, name: NAME, soname: SONAME });
      expect(parseElf(new Uint8Array(readFileSync(stripped))).symbols.length).toBe(0);
      const r = buildPatch(new Uint8Array(readFileSync(stripped)), new Uint8Array(readFileSync(n)), {
        oldName: stripped,
        newName: n,
        oldDebug: { bytes: new Uint8Array(readFileSync(o)), name: o },
      });
      console.log(`${f.label}: ${r.report.stats.oldFunctions} functions, package ${r.plan.functions.map((x) => x.name).join(', ')} (entry ${r.plan.functions[0]?.entry.kind}), built in ${r.report.stats.millis} ms`);
      expect(r.plan.functions.map((x) => x.name).sort()).toEqual(['XML_ParseBuffer', ...LINE_SHIFTED].sort());
      expect(r.plan.target.name).toBe(NAME);
      if (f.ready) expect(r.plan.functions.every((x) => x.entry.kind === 'padded')).toBe(true);
      // Each function but the fixed one differs only in line-number immediates, all moved by the patch's 6 lines.
      for (const fn of LINE_SHIFTED) {
        const [a, b] = [await normalisedCode(o, fn), await normalisedCode(n, fn)];
        expect(a.length, fn).toBe(b.length);
        const diffs = a.flatMap((x, i) => (x === b[i] ? [] : [[x, b[i]!]]));
        expect(diffs.length, fn).toBeGreaterThan(0);
        for (const [x, y] of diffs) {
          const [mx, my] = [/^mov\s+\$0x([0-9a-f]+),(%e[a-z]+)$/.exec(x!), /^mov\s+\$0x([0-9a-f]+),(%e[a-z]+)$/.exec(y!)];
          expect(mx && my && mx[2] === my[2] && parseInt(my[1]!, 16) - parseInt(mx[1]!, 16) === PATCH_LINES, `${fn}: ${x} / ${y}`).toBe(true);
        }
      }
    }, 300_000);
  }

  it('the fix reverted keeping the line count (Debian flags): the package holds exactly XML_ParseBuffer', async () => {
    const b = await buildLib(src, 'old-same-lines', FLAVOURS[0]!);
    if (b.millis > 0) console.log(`built old-same-lines ${NAME} in ${(b.millis / 1000).toFixed(1)} s`);
    const n = await lib('new', FLAVOURS[0]!);
    const r = buildPatch(new Uint8Array(readFileSync(b.lib)), new Uint8Array(readFileSync(n)), { oldName: b.lib, newName: n });
    expect(r.plan.functions.map((x) => x.name)).toEqual(['XML_ParseBuffer']);
  }, 300_000);

  it('apply --all patches every process of the build whatever its file name, lists another build of the soname, the negative length is refused live, remove --all restores', async () => {
    const [deb, ready] = [FLAVOURS[0]!, FLAVOURS[1]!];
    const [o, n, ro, rn] = [await lib('old', deb), await lib('new', deb), await lib('old', ready), await lib('new', ready)];
    const libDir = join(run0, 'lib');
    const stripped = await installStripped(o, libDir, { ready: false, name: NAME, soname: SONAME });
    const dbg = join(run0, 'usr/lib/debug');
    await installDebugFile(stripped, o, dbg);
    // The same build copied under another file name (an application's bundled copy).
    const copyDir = join(run0, 'opt/app/lib');
    await installStripped(o, copyDir, { ready: false, name: 'libexpat-app.so', soname: SONAME });
    // Another build of libexpat.so.1 under an unrelated file name: only its DT_SONAME tells what it is.
    const otherDir = join(run0, 'opt/other/lib');
    const other = await installStripped(ro, otherDir, { ready: true, name: 'xmlparser.so', soname: SONAME });
    const client = join(run0, 'client');
    await sh('gcc', ['-O2', '-pthread', '-I', join(src, 'expat/lib'), '-o', client, join(FIXTURE, 'client.c'), join(libDir, SONAME)]);

    const pkg = join(run0, 'deb.hpk');
    const b = await runCli(['build', '--old', stripped, '--new', n, '-o', pkg, '--debug-dir', dbg, '--json']);
    expect(b.code, b.stderr).toBe(0);
    expect((JSON.parse(b.stdout) as { functions: { name: string }[] }).functions.map((x) => x.name).sort()).toEqual(['XML_ParseBuffer', ...LINE_SHIFTED].sort());
    const readyPkg = join(run0, 'ready.hpk');
    const b2 = await runCli(['build', '--old', other, '--old-debug', ro, '--new', rn, '-o', readyPkg, '--json']);
    expect(b2.code, b2.stderr).toBe(0);

    const env = (dir: string) => ({ ...process.env, LD_LIBRARY_PATH: dir });
    const procs = [
      await startTarget(client, [], { env: env(libDir) }),
      await startTarget(client, [], { env: env(libDir) }),
      await startTarget(client, [], { env: env(libDir) }),
      await startTarget(client, [], { env: env(copyDir) }),
    ];
    const otherProc = await startTarget(client, [], { env: env(otherDir) });
    const all = [...procs, otherProc];
    try {
      for (const t of all) expect(await ask(t, 'n', /ok -?\d+\n/)).toBe('ok 0\n');
      // The vulnerable XML_ParseBuffer accepts the negative length (error code 0).
      for (const t of all) expect(await ask(t, 'x', /code -?\d+\n/)).toBe('code 0\n');

      const a = await runCli(['apply', pkg, '--all', '--allow-unsigned', '--json']);
      expect(a.code, a.stderr).toBe(0);
      const results = (JSON.parse(a.stdout) as { results: { pid: number; status: string; code?: string; reason?: string }[] }).results;
      const mine = results.filter((x) => all.some((t) => t.pid === x.pid));
      expect(mine.filter((x) => x.status === 'patched').map((x) => x.pid).sort()).toEqual(procs.map((t) => t.pid).sort());
      const skipped = mine.find((x) => x.pid === otherProc.pid)!;
      expect(skipped).toMatchObject({ status: 'skipped', code: 'OTHER_BUILD' });
      expect(skipped.reason).toMatch(/runs another build of libexpat\.so\.1\.8\.10 \(.*xmlparser\.so, build-id [0-9a-f]+/);
      const a2 = await runCli(['apply', readyPkg, '--all', '--allow-unsigned', '--json']);
      expect(a2.code, a2.stderr).toBe(0);
      const r2 = (JSON.parse(a2.stdout) as { results: { pid: number; status: string }[] }).results;
      expect(r2.find((x) => x.pid === otherProc.pid)?.status).toBe('patched');

      for (const t of all) expect(await ask(t, 'x', /code -?\d+\n/)).toBe(`code ${INVALID_ARGUMENT}\n`);
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/calls [1-9]\d* failures 0\n/);

      for (const out of [b.stdout, b2.stdout]) {
        const rm = await runCli(['remove', (JSON.parse(out) as { id: string }).id, '--all', '--json']);
        expect(rm.code, rm.stderr).toBe(0);
      }
      // Removed: the vulnerable code runs again, and the worker never saw a failed parse.
      for (const t of all) expect(await ask(t, 'x', /code -?\d+\n/)).toBe('code 0\n');
      for (const t of all) expect(await ask(t, 's', /calls \d+ failures \d+\n/)).toMatch(/failures 0\n/);
    } finally {
      for (const t of all) await t.kill();
    }
  }, 900_000);
});
