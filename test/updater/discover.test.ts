/**
 * Which processes a package applies to and which run another build of the target library (the
 * "runs another build" result): by build-id whatever the file is called, and by file name or
 * DT_SONAME for the other builds. Real libraries and processes.
 */
import { copyFileSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { findImageProcesses, sameLibrary } from '../../src/patch/updater/discover.js';
import { readElfSummaryFromFile, readSonameFromFile } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';

killTargetsAfterAll();

describe('sameLibrary', () => {
  it('another version of the same library behind the same soname', () => {
    expect(sameLibrary('libz.so.1.2.12', 'libz.so.1.2.13')).toBe(true);
    expect(sameLibrary('libxml2.so.2.9.13', 'libxml2.so.2.9.14')).toBe(true);
    expect(sameLibrary('libfoo.so', 'libfoo.so.2.1')).toBe(true);
    expect(sameLibrary('libexpat.so.1', 'libexpat.so.1.8.10')).toBe(true);
  });
  it('another major version, another library, or not a library', () => {
    expect(sameLibrary('libfoo.so.3.0', 'libfoo.so.2.1')).toBe(false);
    expect(sameLibrary('libzstd.so.1.5.4', 'libz.so.1.2.13')).toBe(false);
    expect(sameLibrary('server', 'server')).toBe(false);
  });
});

const LIB = 'int disc_value(int x) { return x * VALUE; }\n';
const MAIN = `#include <stdio.h>
int disc_value(int);
int main(void) { char l[8]; printf("ready %d\\n", disc_value(2)); fflush(stdout); while (fgets(l, sizeof l, stdin)) {} return 0; }
`;

describe('finding the processes of a library build', () => {
  const dir = join(tmpdir(), `hotpatch-discover-${process.pid}`);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const build = (value: number) => compile({ source: LIB, shared: true, flags: ['-O2', `-DVALUE=${value}`, '-Wl,-soname,libdisc.so.1'] });
  /** Installs `lib` as dir/sub/name, reached through the soname link. */
  const install = (lib: string, sub: string, name: string) => {
    mkdirSync(join(dir, sub), { recursive: true });
    copyFileSync(lib, join(dir, sub, name));
    symlinkSync(name, join(dir, sub, 'libdisc.so.1'));
    return join(dir, sub);
  };

  it('reads DT_SONAME from the file; none for an executable; a truncated file gives none, no error', async () => {
    const lib = await build(3);
    expect(readSonameFromFile(lib, readElfSummaryFromFile(lib)!)).toBe('libdisc.so.1');
    const exe = await compile({ source: MAIN, extraFiles: [lib] });
    expect(readSonameFromFile(exe, readElfSummaryFromFile(exe)!)).toBeUndefined();
    mkdirSync(dir, { recursive: true });
    const cut = join(dir, 'cut.so');
    const bytes = readFileSync(lib);
    const summary = readElfSummaryFromFile(lib)!;
    writeFileSync(cut, bytes.subarray(0, 8192));
    expect(readSonameFromFile(cut, summary)).toBeUndefined();
  });

  it('the build is matched by build-id under any file name; another build is reported by its DT_SONAME, whatever its file name', async () => {
    const [a, b] = [await build(3), await build(5)];
    const main = await compile({ source: MAIN, extraFiles: [a] });
    const real = install(a, 'lib', 'libdisc.so.1.0.0');
    const renamed = install(a, 'app', 'bundled-copy.so');
    const other = install(b, 'other', 'xmlthing.so');
    const t = (d: string) => startTarget(main, [], { env: { ...process.env, LD_LIBRARY_PATH: d }, readyText: /ready \d+/ });
    const [p1, p2, p3] = [await t(real), await t(renamed), await t(other)];
    const id = parseElf(new Uint8Array(readFileSync(a))).buildId!;
    const target = { buildId: id, name: 'libdisc.so.1.0.0', size: readFileSync(a).length };
    const scan = findImageProcesses(target, { pids: [p1.pid, p2.pid, p3.pid] });
    expect(scan.matches.map((m) => [m.pid, m.module.name])).toEqual([
      [p1.pid, 'libdisc.so.1.0.0'],
      [p2.pid, 'bundled-copy.so'],
    ]);
    expect(scan.others.map((m) => m.pid)).toEqual([p3.pid]);
    expect(scan.others[0]!.reason).toMatch(/^runs another build of libdisc\.so\.1\.0\.0 \(.*\/other\/xmlthing\.so, build-id [0-9a-f]+; the patch is for /);
    expect(scan.unreadable).toEqual([]);

    // Another library (another soname) in a process is neither a match nor another build.
    const foreign = { buildId: 'ab'.repeat(20), name: 'libother.so.2.0', size: 1 };
    const none = findImageProcesses(foreign, { pids: [p3.pid] });
    expect(none.others).toEqual([]);
    expect(none.unreadable.map((u) => (u.error as { code?: string }).code)).toEqual(['MODULE_NOT_LOADED']);
  });
});
