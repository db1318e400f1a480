import { execFile, spawnSync } from 'node:child_process';
import { closeSync, existsSync, lstatSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { ElfError, HotpatchError, ProcessError } from '../../src/errors.js';
import { ScanCache, scanAllProcesses, scanFile, scanProcess, type ModuleScan } from '../../src/scan/index.js';
import { buildDemoService } from '../../src/demo/sample.js';
import { KeepAliveConnection } from '../../src/load/http-client.js';
import { compile, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
killTargetsAfterAll();

const PADDED = ['padded_add', 'padded_loop', 'padded_static'];
const PLAIN = ['plain_mul', 'plain_static'];

/** Function symbol values from `nm` (oracle independent of src/elf). */
async function nm(path: string): Promise<Map<string, bigint>> {
  const { stdout } = await run('nm', ['--defined-only', path]);
  const out = new Map<string, bigint>();
  for (const line of stdout.split('\n')) {
    const m = /^([0-9a-f]+) [tTwW] (\S+)$/.exec(line);
    if (m) out.set(m[2]!, BigInt(`0x${m[1]}`));
  }
  return out;
}

function fn(m: ModuleScan, name: string) {
  const f = m.functions.find((x) => x.name === name || x.aliases?.includes(name));
  if (!f) throw new Error(`${name} not in scan of ${m.path}: ${m.functions.map((x) => x.name).join(' ')}`);
  return f;
}

/** The CLI from dist/, rebuilt when a source of this area is newer (the test script builds first anyway). */
function ensureBuilt(): void {
  const sources = ['src/scan/scan.ts', 'src/cli/commands/scan.ts', 'src/process/inspect/process.ts', 'src/process/inspect/modules.ts'];
  const built = existsSync(CLI) && existsSync(join(REPO_ROOT, 'dist/src/scan/scan.js')) ? statSync(join(REPO_ROOT, 'dist/src/scan/scan.js')).mtimeMs : 0;
  if (sources.some((s) => statSync(join(REPO_ROOT, s)).mtimeMs > built)) {
    spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, stdio: 'ignore' });
  }
  expect(existsSync(CLI)).toBe(true);
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { maxBuffer: 256 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

let pie: string;
let nopie: string;
let allPadded: string;
let lib: string;

beforeAll(async () => {
  ensureBuilt();
  [pie, nopie, allPadded, lib] = await Promise.all([
    compile({ file: 'scan/mixed.c', flags: ['-O2', '-fpie', '-pie', '-ldl'], name: 'mixed-pie' }),
    compile({ file: 'scan/mixed.c', flags: ['-O2', '-fno-pie', '-no-pie', '-ldl'], name: 'mixed-nopie' }),
    compile({ file: 'scan/mixed.c', flags: ['-O2', '-fpatchable-function-entry=7,5', '-ldl'], name: 'mixed-all' }),
    compile({ file: 'scan/lib.c', shared: true, flags: ['-O2'], name: 'libscan.so' }),
  ]);
});

describe('scanFile', () => {
  it.each([
    ['PIE', () => pie],
    ['non-PIE', () => nopie],
  ])('tells padded from plain functions in a %s executable, at link-time addresses', async (_l, get) => {
    const path = get();
    const m = scanFile(path).modules[0]!;
    const syms = await nm(path);
    expect(m.path).toBe(path);
    expect(m.kind).toBe('file');
    expect(m.symbolTable).toBe('symtab');
    const { stdout } = await run('readelf', ['-n', path]);
    expect(stdout).toContain(`Build ID: ${m.buildId}`);
    for (const name of PADDED) {
      expect(fn(m, name), name).toMatchObject({ entry: 'padded', form: 'patchable-function-entry', address: syms.get(name) });
    }
    for (const name of PLAIN) {
      const f = fn(m, name);
      expect(f.form, name).not.toBe('patchable-function-entry');
      expect(f.address).toBe(syms.get(name));
      expect(f.entry).toBe('plain');
    }
    expect(fn(m, 'tiny_empty').entry).toBe('too-small');
    expect(m.total).toBe(m.functions.length);
    expect(m.hotpatchable).toBe(m.padded + m.plain);
    expect(m.padded + m.plain + m.tooSmall).toBe(m.total);
    expect(m.forms['patchable-function-entry']).toBe(3);
    if (_l === 'non-PIE') expect(fn(m, 'main').address).toBeGreaterThanOrEqual(0x400000n);
  });

  it('sees every function padded in a -fpatchable-function-entry=7,5 build', () => {
    const m = scanFile(allPadded).modules[0]!;
    for (const name of [...PADDED, ...PLAIN, 'tiny_empty', 'main']) {
      expect(fn(m, name), name).toMatchObject({ entry: 'padded', form: 'patchable-function-entry' });
    }
  });

  it('scans a shared library', async () => {
    const m = scanFile(lib).modules[0]!;
    const syms = await nm(lib);
    expect(fn(m, 'lib_padded')).toMatchObject({ entry: 'padded', form: 'patchable-function-entry', address: syms.get('lib_padded') });
    expect(fn(m, 'lib_plain')).toMatchObject({ entry: 'plain', address: syms.get('lib_plain') });
    expect(fn(m, 'lib_tiny').entry).toBe('too-small');
  });

  it('scans real system binaries (dynsym only) and groups aliases', () => {
    const bash = scanFile('/usr/bin/bash').modules[0]!;
    expect(bash.total).toBeGreaterThan(500);
    const libc = scanFile('/usr/lib/x86_64-linux-gnu/libc.so.6').modules[0]!;
    expect(libc.total).toBeGreaterThan(1000);
    expect(libc.percent).toBeGreaterThan(90);
    const malloc = fn(libc, 'malloc');
    expect(malloc.entry).not.toBe('too-small');
    // Each address appears once.
    expect(new Set(libc.functions.map((f) => f.address)).size).toBe(libc.functions.length);
  });

  it('survives hostile files: truncated and bit-flipped executables give ElfError or a result, nothing else', () => {
    const good = readFileSync(pie);
    const dir = mkdtempSync(join(tmpdir(), 'hp-scan-fuzz-'));
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    let elfErrors = 0;
    try {
      const cache = new ScanCache();
      for (let i = 0; i < 300; i++) {
        const b = Buffer.from(good);
        let bytes: Buffer = b;
        if (i % 3 === 0) bytes = b.subarray(0, rnd(b.length));
        else {
          // Flip bytes, favouring the headers and tables at both ends of the file.
          for (let k = 0; k < 1 + rnd(8); k++) {
            const at = rnd(2) === 0 ? rnd(Math.min(b.length, 1024)) : b.length - 1 - rnd(Math.min(b.length, 4096));
            b[at] = rnd(256);
          }
        }
        const f = join(dir, `m${i}`);
        writeFileSync(f, bytes);
        try {
          const m = scanFile(f, { cache }).modules[0]!;
          expect(m.total).toBe(m.functions.length);
        } catch (e) {
          if (!(e instanceof ElfError)) throw e;
          elfErrors++;
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(elfErrors).toBeGreaterThan(50);
  });

  it('gives typed errors for missing, non-ELF and directory paths', () => {
    expect(() => scanFile('/nonexistent/file')).toThrow(expect.objectContaining({ code: 'FILE_NOT_FOUND' }));
    expect(() => scanFile('/etc/passwd')).toThrow(ElfError);
    expect(() => scanFile('/etc')).toThrow(HotpatchError);
  });
});

describe('hotpatch scan (CLI)', () => {
  it('prints the JSON shape of cli.md for a file', async () => {
    const r = await cli(['scan', '--json', pie]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as { modules: Array<Record<string, unknown>> };
    expect(doc.modules).toHaveLength(1);
    const m = doc.modules[0]!;
    for (const k of ['path', 'buildId', 'functions', 'hotpatchable', 'total']) expect(m).toHaveProperty(k);
    const fns = m.functions as Array<{ name: string; address: string; size: number; entry: string }>;
    const lib = scanFile(pie).modules[0]!;
    expect(fns.length).toBe(lib.total);
    const pa = fns.find((f) => f.name === 'padded_add')!;
    expect(pa.address).toBe(`0x${fn(lib, 'padded_add').address.toString(16)}`);
    expect(pa.entry).toBe('padded');
    expect(typeof pa.size).toBe('number');
    for (const f of fns) expect(['padded', 'plain', 'too-small']).toContain(f.entry);
    expect(m.hotpatchable).toBe(lib.hotpatchable);
  });

  it('prints one line per module, and functions with -v', async () => {
    const r = await cli(['scan', pie]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    expect(r.stdout).toMatch(/hotpatchable \(\d+ padded/);
    const v = await cli(['scan', '-v', pie]);
    expect(v.stdout).toMatch(/padded +padded_add/);
  });

  it('exits 1 with a clear message for errors and 2 for bad usage', async () => {
    const missing = await cli(['scan', '/nonexistent/x']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('no such file');
    const notElf = await cli(['scan', '/etc/passwd']);
    expect(notElf.code).toBe(1);
    expect(notElf.stderr).toContain('not an ELF file');
    const t = await startTarget(pie, [lib]);
    await t.kill();
    const dead = await cli(['scan', '--pid', String(t.pid)]);
    expect(dead.code).toBe(1);
    expect(dead.stderr).toMatch(/process \d+ does not exist/);
    expect(dead.stdout).toBe('');
    for (const args of [['scan'], ['scan', '--pid', 'abc'], ['scan', '--pid', '1', pie], ['scan', '--all', pie], ['scan', '--pid', '0']]) {
      expect((await cli(args)).code, args.join(' ')).toBe(2);
    }
  });
});

describe('scanProcess', () => {
  let t: Target;
  beforeAll(async () => {
    t = await startTarget(pie, [lib]);
  });
  const printed = (name: string) => BigInt(new RegExp(`^${name}=(0x[0-9a-f]+)$`, 'm').exec(t.output())![1]!);

  it('lists the padded functions of a running fixture at run-time addresses', async () => {
    const r = scanProcess(t.pid);
    expect(r.pid).toBe(t.pid);
    expect(r.exe).toBe(pie);
    const exe = r.modules.find((m) => m.kind === 'executable')!;
    expect(exe.path).toBe(pie);
    expect(exe.loadBias).not.toBe(0n);
    for (const name of PADDED) expect(fn(exe, name), name).toMatchObject({ entry: 'padded', form: 'patchable-function-entry', address: printed(name) });
    for (const name of PLAIN) expect(fn(exe, name).address).toBe(printed(name));
    const libMod = r.modules.find((m) => m.path === lib)!;
    expect(fn(libMod, 'lib_padded')).toMatchObject({ entry: 'padded', address: printed('lib_padded') });
    expect(fn(libMod, 'lib_plain').address).toBe(printed('lib_plain'));
    expect(r.modules.map((m) => m.kind)).toEqual(expect.arrayContaining(['executable', 'library', 'loader', 'vdso']));
    expect(r.modules.find((m) => m.path.endsWith('libc.so.6'))!.total).toBeGreaterThan(1000);
    for (const m of r.modules) expect(m.error).toBeUndefined();

    const c = await cli(['scan', '--json', '--pid', String(t.pid)]);
    expect(c.code).toBe(0);
    const doc = JSON.parse(c.stdout) as { modules: Array<{ path: string; functions: Array<{ name: string; address: string; entry: string }> }> };
    const cExe = doc.modules.find((m) => m.path === pie)!;
    expect(cExe.functions.find((f) => f.name === 'padded_add')).toMatchObject({ entry: 'padded', address: `0x${printed('padded_add').toString(16)}` });
  });

  it('classifies the bytes really in memory, not the file', () => {
    const cache = new ScanCache();
    const before = scanProcess(t.pid, { cache });
    const exeBefore = before.modules.find((m) => m.kind === 'executable')!;
    expect(fn(exeBefore, 'padded_loop').entry).toBe('padded');
    // Overwrite the 5 padding NOPs before padded_loop with `add [rax], al` bytes (00 00 ...).
    const at = printed('padded_loop') - 5n;
    const fd = openSync(`/proc/${t.pid}/mem`, 'r+');
    try {
      writeSync(fd, new Uint8Array(5), 0, 5, Number(at));
    } finally {
      closeSync(fd);
    }
    const after = scanProcess(t.pid, { cache });
    const exeAfter = after.modules.find((m) => m.kind === 'executable')!;
    expect(fn(exeAfter, 'padded_loop').entry).toBe('plain');
    expect(fn(exeAfter, 'padded_add').entry).toBe('padded');
    // The file still says padded.
    expect(fn(scanFile(pie, { cache }).modules[0]!, 'padded_loop').entry).toBe('padded');
    // Unchanged modules (libc, ...) came from the cache the second time.
    expect(cache.stats.classifyHits).toBeGreaterThan(3);
  });

  it('scans a process whose executable file was deleted (through map_files)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-scan-del-'));
    try {
      const copy = join(dir, 'gone');
      writeFileSync(copy, readFileSync(pie), { mode: 0o755 });
      const d = await startTarget(copy, [lib]);
      try {
        rmSync(copy);
        const exe = scanProcess(d.pid, { cache: new ScanCache() }).modules.find((m) => m.kind === 'executable')!;
        expect(exe.error).toBeUndefined();
        expect(exe.path).toBe(copy);
        expect(fn(exe, 'padded_add').entry).toBe('padded');
      } finally {
        await d.kill();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives typed errors for a dead pid and a kernel thread', async () => {
    const dead = await startTarget(pie, [lib]);
    await dead.kill();
    expect(() => scanProcess(dead.pid)).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));
    let kthread = false;
    try {
      kthread = readdirSync('/proc/2').length > 0;
    } catch {
      kthread = false;
    }
    if (kthread) expect(() => scanProcess(2)).toThrow(ProcessError);
  });
});

describe('the sample service', () => {
  it('builds, serves requests and is fully padded', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-sample-'));
    try {
      const { old: bin } = await buildDemoService(dir);
      const m = scanFile(bin).modules[0]!;
      for (const name of ['echo_reply', 'query_param', 'serve_connection', 'main']) {
        expect(fn(m, name), name).toMatchObject({ entry: 'padded', form: 'patchable-function-entry' });
      }
      const t = await startTarget(bin, ['0', '2']);
      try {
        const port = Number(/ready (\d+)/.exec(t.output())![1]);
        const conn = await KeepAliveConnection.open(port);
        try {
          expect((await conn.get('/health')).body.toString()).toBe('ok');
          expect((await conn.get('/echo?msg=hi&len=2')).body.toString()).toBe('hi');
        } finally {
          conn.close();
        }
      } finally {
        await t.kill();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
