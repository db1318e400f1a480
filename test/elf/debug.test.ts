/**
 * Separate debug files: a stripped file takes its .symtab from its debug file (objcopy
 * --only-keep-debug) or unstripped copy; the /usr/lib/debug/.build-id path convention; and the
 * scan and build commands on a stripped library with and without its debug file.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { debugFilePath, findDebugFile, parseElf, STT_FUNC } from '../../src/elf/index.js';
import { scanFile } from '../../src/scan/index.js';
import { compile, REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const SOURCE = `
static int helper(int x) { return x * 3 + 1; }
__attribute__((noinline)) int lib_work(int x) { return helper(x) + helper(x + 1); }
int lib_other(int x) { return x - 1; }
`;

async function stripped(): Promise<{ full: string; bare: string; debug: string; dir: string }> {
  const full = await compile({ source: SOURCE, shared: true, flags: ['-O2', '-g', '-fPIC'], name: 'libdbg.so.1.0.0' });
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-debug-'));
  const bare = join(dir, 'libdbg.so.1.0.0');
  await run('strip', ['--strip-unneeded', '-o', bare, full]);
  const id = parseElf(new Uint8Array(readFileSync(full))).buildId!;
  const debug = debugFilePath(join(dir, 'debug'), id);
  mkdirSync(join(debug, '..'), { recursive: true });
  await run('objcopy', ['--only-keep-debug', full, debug]);
  return { full, bare, debug, dir };
}

describe('separate debug files', () => {
  it('debugFilePath follows the .build-id/XX/YYYY.debug convention; bad ids are a RangeError', () => {
    expect(debugFilePath('/usr/lib/debug', 'ABCDEF0123')).toBe('/usr/lib/debug/.build-id/ab/cdef0123.debug');
    expect(() => debugFilePath('/d', 'not-hex')).toThrow(RangeError);
    expect(findDebugFile('abcdef0123', ['/nonexistent'])).toBeUndefined();
  });

  it('a stripped file adopts the symbols of its debug file, sections mapped by name and address', async () => {
    const s = await stripped();
    const bare = parseElf(new Uint8Array(readFileSync(s.bare)));
    expect(bare.symbols.length).toBe(0);
    const dbg = parseElf(new Uint8Array(readFileSync(s.debug)));
    expect(dbg.buildId).toBe(bare.buildId);
    bare.adoptSymbols(dbg);
    const f = bare.findSymbol('lib_work', { table: 'symtab' })!;
    expect(f.type).toBe(STT_FUNC);
    expect(bare.sections[f.shndx]!.name).toBe('.text');
    const full = parseElf(new Uint8Array(readFileSync(s.full)));
    expect(f.value).toBe(full.findSymbol('lib_work', { table: 'symtab' })!.value);
    expect(bare.findSymbolByAddress(f.value + 1n)?.symbol.name).toBe('lib_work');
  });

  it('scan: a stripped file lists exports only and says how to get symbols; --debug-file and the .build-id directory give every function', async () => {
    const s = await stripped();
    const plain = await run('node', [CLI, 'scan', s.bare, '-v', '--debug-dir', join(s.dir, 'none')]);
    expect(plain.stdout).toMatch(/exported functions only/);
    expect(plain.stderr).toMatch(/has no \.symtab \(stripped\).*cannot be built from this file alone.*\/usr\/lib\/debug\/\.build-id\/[0-9a-f]{2}\/[0-9a-f]+\.debug.*--debug-file/s);
    const withDebug = scanFile(s.bare, { debugFile: s.debug });
    expect(withDebug.modules[0]!.symbolTable).toBe('symtab');
    expect(withDebug.modules[0]!.debugFile).toBe(s.debug);
    expect(withDebug.modules[0]!.functions.map((f) => f.name)).toContain('lib_work');
    const found = await run('node', [CLI, 'scan', s.bare, '-v', '--debug-dir', join(s.dir, 'debug')]);
    expect(found.stdout).toMatch(/lib_work/);
    expect(found.stderr).toMatch(/symbols from .*\.build-id/);
    expect(() => scanFile(s.bare, { debugFile: s.full.replace('libdbg.so.1.0.0', 'libdbg.so.1.0.0') + '.missing' })).toThrow(expect.objectContaining({ code: 'FILE_NOT_FOUND' }));
  });

  it('build: a debug file of another build is refused (BUILD_DEBUG_MISMATCH)', async () => {
    const s = await stripped();
    const other = await compile({ source: `${SOURCE}\nint more(int x) { return x; }\n`, shared: true, flags: ['-O2', '-g', '-fPIC'] });
    const r = await run('node', [CLI, 'build', '--old', s.bare, '--old-debug', other, '--new', s.full, '-o', join(s.dir, 'x.hpk')]).catch((e: { code: number; stderr: string }) => e);
    expect('code' in r ? r.code : 0).toBe(1);
    expect(r.stderr).toMatch(/is not the debug file of .*\[BUILD_DEBUG_MISMATCH\]/);
  });
});
