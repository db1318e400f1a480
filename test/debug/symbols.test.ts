/**
 * Debug symbols of patched code with the real tools (issue #12 item 2): `hotpatch symbols` writes
 * /tmp/perf-PID.map and a gdb symbol file; perf then names the patched function in its samples,
 * and gdb names the patched frame and continues the backtrace past it — for a C target (no unwind
 * information: gdb's own prologue analysis) and a C++ target (the patch's .eh_frame in the file).
 * Controls: without the files perf and gdb do not know the code. A planted symbolic link is never
 * written through.
 */
import { execFile } from 'node:child_process';
import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPatch } from '../../src/patch/builder/index.js';
import { applyPatch } from '../../src/patch/engine/index.js';
import { collectDebugInfo, perfMapPath, writeGdbSymbolFile, writePerfMap } from '../../src/patch/debug/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { ask, killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { buildPair, RECOMMENDED } from '../builder/pairs.js';

killTargetsAfterAll();

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'hotpatch-symbols-'));
const cleanup: string[] = [dir];
afterAll(() => {
  for (const p of cleanup) rmSync(p, { recursive: true, force: true });
});

async function tool(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  const r = await run(cmd, args, { encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
  return r.stdout + r.stderr;
}

/** Every thread's backtrace, each as its frame lines (gdb attaches, prints, detaches). */
async function backtraces(pid: number, symbolFile?: string): Promise<string[][]> {
  const load = symbolFile ? ['-ex', `add-symbol-file ${symbolFile} -o 0`] : [];
  const out = await tool('gdb', ['-p', String(pid), '-batch', '-nx', ...load, '-ex', 'thread apply all bt']);
  return out.split(/\nThread \d+ /).slice(1).map((t) => t.split('\n').filter((l) => /^#\d+ /.test(l)));
}

/**
 * Backtraces taken while the main thread sleeps in the patched code ("slow": 3 s in usleep); on a
 * loaded machine gdb may start too late, so it tries again (up to 5 times) until it caught that.
 */
async function slowBacktraces(t: Target, symbolFile?: string): Promise<string[][]> {
  let threads: string[][] = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = t.output().length;
    t.child.stdin!.write('slow\n');
    await new Promise((r) => setTimeout(r, 200));
    threads = await backtraces(t.pid, symbolFile);
    const deadline = Date.now() + 30_000;
    while (!/slow [^\n]*\n/.test(t.output().slice(before)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (threads.some((f) => names(f).includes('usleep'))) break;
  }
  return threads;
}

/** Function names of frames (the word after "in", or the first word when gdb gives none). */
function names(frames: readonly string[]): string[] {
  return frames.map((f) => /^#\d+\s+(?:0x[0-9a-f]+ in )?([^ (]+)/.exec(f)?.[1] ?? '?');
}

async function patched(scenario: string, cxx: boolean, patchId: string, extra: string[] = []): Promise<{ t: Target; plan: PatchPlan }> {
  const pair = await buildPair(scenario, { cxx, flags: [...RECOMMENDED, '-pthread', ...extra] });
  const built = buildPatch(new Uint8Array(readFileSync(pair.old)), new Uint8Array(readFileSync(pair.new)), { oldName: pair.old });
  const t = await startTarget(pair.old);
  await applyPatch(t.pid, built.plan, { patchId, timeoutMs: 20_000 });
  return { t, plan: built.plan };
}

describe('C target: perf and gdb through the patched crunch', () => {
  let t: Target;
  let json: { pid: number; patches: number; functions: number; perfMap: { path: string; symbols: number }; gdb: { path: string; symbols: number; ehFrame: boolean; computedFrames: number; command: string } };
  beforeAll(async () => {
    ({ t } = await patched('debug_symbols', false, 'c0ffee01'));
    cleanup.push(perfMapPath(t.pid));
    expect(await ask(t, '3', /3: .*\n/)).toBe('3: 40\n'); // the fixed build's answer (31 → 37)
    const r = await tool('node', [CLI, 'symbols', '--pid', String(t.pid), '--perf', '--gdb', dir, '--json']);
    json = JSON.parse(r);
  }, 300_000);
  afterAll(async () => {
    await t?.kill();
  });

  it('hotpatch symbols --json: the map and the ELF, the gdb command line; the ELF layout passes readelf', async () => {
    expect(json).toMatchObject({ pid: t.pid, patches: 1, functions: 1, perfMap: { path: `/tmp/perf-${t.pid}.map`, symbols: 1 }, gdb: { path: join(dir, `${t.pid}.elf`), symbols: 1, ehFrame: false, computedFrames: 1 } });
    expect(json.gdb.command).toBe(`gdb -p ${t.pid} -ex 'add-symbol-file ${json.gdb.path} -o 0'`);
    const info = collectDebugInfo(t.pid);
    const fn = info.patches[0]!.functions[0]!;
    expect(fn.name).toBe('crunch');
    const map = readFileSync(json.perfMap.path, 'utf8');
    expect(map).toBe(`${fn.address.toString(16)} ${fn.size.toString(16)} crunch [hotpatch c0ffee01]\n`);
    expect(statSync(json.perfMap.path).mode & 0o7777).toBe(0o644);
    expect(statSync(json.gdb.path).mode & 0o7777).toBe(0o644);
    const re = await tool('readelf', ['-W', '-h', '-S', '-s', json.gdb.path]);
    expect(re).not.toMatch(/warning|error/i);
    expect(re).toMatch(/Type:\s+EXEC/);
    expect(re).toMatch(/Machine:\s+Advanced Micro Devices X86-64/);
    expect(re).toMatch(new RegExp(`\\.text\\.hotpatch\\.c0ffee01 PROGBITS\\s+0*${info.patches[0]!.code.start.toString(16)} \\S+ \\S+ 00\\s+AX`));
    expect(re).toMatch(new RegExp(`1: 0*${fn.address.toString(16)}\\s+${fn.size}\\s+FUNC\\s+GLOBAL DEFAULT\\s+1 crunch`));
    // The section holds the bytes the target runs.
    const dump = await tool('objdump', ['-d', json.gdb.path]);
    expect(dump).toMatch(/<crunch>:/);
    // The frame information computed for it reads back: one CIE, one FDE over crunch.
    const frames = await tool('readelf', ['-W', '--debug-dump=frames', json.gdb.path]);
    expect(frames).not.toMatch(/warning|error/i);
    expect(frames).toMatch(new RegExp(`FDE cie=00000000 pc=0*${fn.address.toString(16)}\\.\\.0*${(fn.address + fn.size).toString(16)}`));
  });

  it('perf record + perf report name the patched function from the map', async () => {
    const data = join(dir, 'perf.data');
    await tool('perf', ['record', '-e', 'cpu-clock', '-g', '-o', data, '-p', String(t.pid), '--', 'sleep', '1']);
    const report = await tool('perf', ['report', '-i', data, '--stdio', '--no-children', '--sort', 'sym']);
    expect(report).toMatch(/crunch \[hotpatch c0ffee01\]/);
    const script = await tool('perf', ['script', '-i', data]);
    expect(script).toMatch(/crunch \[hotpatch c0ffee01\]\+0x[0-9a-f]+ \(\/tmp\/perf-\d+\.map\)/);
  }, 300_000);

  it('control: without the map perf cannot name the samples in the new code', async () => {
    const map = readFileSync(json.perfMap.path);
    rmSync(json.perfMap.path);
    try {
      const data = join(dir, 'perf-nomap.data');
      await tool('perf', ['record', '-e', 'cpu-clock', '-o', data, '-p', String(t.pid), '--', 'sleep', '0.5']);
      const report = await tool('perf', ['report', '-i', data, '--stdio', '--sort', 'sym']);
      expect(report).not.toMatch(/crunch \[hotpatch/);
    } finally {
      writeFileSync(json.perfMap.path, map, { mode: 0o644 });
    }
  }, 300_000);

  it('gdb names the patched frame and unwinds past it (a worker spinning in it, main sleeping in it)', async () => {
    const threads = await slowBacktraces(t, json.gdb.path); // main sleeps 3 s in the new crunch
    const without = await slowBacktraces(t);
    const all = threads.map(names);
    const worker = all.find((n) => n.includes('worker'))!;
    const main = all.find((n) => n.includes('main'))!;
    expect(worker.slice(0, 3), threads.flat().join('\n')).toEqual(['crunch', 'driver', 'worker']);
    expect(worker).toContain('start_thread');
    // usleep → crunch (patched, frame information computed from its code) → driver → main.
    const u = main.indexOf('usleep');
    expect(u, threads.flat().join('\n')).toBeGreaterThanOrEqual(0);
    expect(main.slice(u, u + 4), threads.flat().join('\n')).toEqual(['usleep', 'crunch', 'driver', 'main']);
    // Control: without the file gdb does not know the patched frame.
    expect(without.map(names).flat()).not.toContain('crunch');
  }, 300_000);

  it('a symbolic link planted at /tmp/perf-PID.map or PID.elf is refused, nothing is written through it', () => {
    const info = collectDebugInfo(t.pid);
    const outside = mkdtempSync(join(tmpdir(), 'hotpatch-victim-'));
    cleanup.push(outside);
    const victim = join(outside, 'victim');
    writeFileSync(victim, 'precious\n');
    const fake = join(dir, 'perf-link.map');
    for (const [link, to] of [[fake, victim], [join(dir, 'perf-dangling.map'), join(outside, 'created')]] as const) {
      symlinkSync(to, link);
      expect(() => writePerfMap(info, link)).toThrow(expect.objectContaining({ code: 'PATH_UNSAFE' }));
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      expect(readlinkSync(link)).toBe(to);
    }
    // The real path too: perf's own file name in /tmp.
    const real = perfMapPath(t.pid);
    rmSync(real, { force: true });
    symlinkSync(victim, real);
    expect(() => writePerfMap(info)).toThrow(expect.objectContaining({ code: 'PATH_UNSAFE' }));
    expect(lstatSync(real).isSymbolicLink()).toBe(true);
    const gdbDir = join(dir, 'gdb');
    mkdirSync(gdbDir);
    symlinkSync(victim, join(gdbDir, `${t.pid}.elf`));
    expect(() => writeGdbSymbolFile(info, gdbDir)).toThrow(expect.objectContaining({ code: 'PATH_UNSAFE' }));
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(existsSync(join(outside, 'created'))).toBe(false);
    rmSync(real);
    // A hard link to another file is not read back into the (world-readable) map.
    const secret = join(outside, 'secret');
    writeFileSync(secret, 'dead 1 secret_line\n', { mode: 0o600 });
    linkSync(secret, real);
    expect(() => writePerfMap(info)).not.toThrow();
    expect(readFileSync(real, 'utf8')).not.toMatch(/secret_line/);
    expect(readFileSync(secret, 'utf8')).toBe('dead 1 secret_line\n');
    rmSync(real);
    // A regular file of ours is replaced, keeping a JIT's lines and dropping our stale ones.
    writeFileSync(real, '1000 10 jitted_fn\ndead 1 crunch [hotpatch old]\n');
    writePerfMap(info);
    expect(readFileSync(real, 'utf8')).toMatch(/^1000 10 jitted_fn\n[0-9a-f]+ [0-9a-f]+ crunch \[hotpatch c0ffee01\]\n$/);
  });
});

describe('C target built with -fno-omit-frame-pointer: perf -g call chains leave the patched code too', () => {
  let t: Target;
  beforeAll(async () => {
    ({ t } = await patched('debug_symbols', false, 'c0ffee03', ['-fno-omit-frame-pointer']));
    cleanup.push(perfMapPath(t.pid));
  }, 300_000);
  afterAll(async () => {
    await t?.kill();
  });

  it('perf script: crunch [hotpatch] then worker and start_thread in the same call chain; gdb: usleep → crunch → driver → main', async () => {
    const r = JSON.parse(await tool('node', [CLI, 'symbols', '--pid', String(t.pid), '--gdb', join(dir, 'fp'), '--perf', '--json'])) as { gdb: { path: string; computedFrames: number } };
    expect(r.gdb.computedFrames).toBe(1);
    const data = join(dir, 'perf-fp.data');
    await tool('perf', ['record', '-e', 'cpu-clock', '-g', '-o', data, '-p', String(t.pid), '--', 'sleep', '1']);
    const script = await tool('perf', ['script', '-i', data]);
    // The chain goes on into the program. crunch's loop does not set up a frame (a leaf), so rbp is
    // still driver's and the frame-pointer walk skips driver, as it would in unpatched code.
    expect(script).toMatch(/crunch \[hotpatch c0ffee03\][^\n]*\n(?:[^\n]*driver[^\n]*\n)?[^\n]*worker[^\n]*\n[^\n]*start_thread/);
    const threads = await slowBacktraces(t, r.gdb.path);
    const main = threads.map(names).find((n) => n.includes('main'))!;
    const u = main.indexOf('usleep');
    expect(main.slice(u, u + 4), threads.flat().join('\n')).toEqual(['usleep', 'crunch', 'driver', 'main']);
  }, 300_000);
});

describe('C++ target: gdb unwinds through patched frames with the patch\'s .eh_frame', () => {
  let t: Target;
  beforeAll(async () => {
    ({ t } = await patched('cxx_exceptions', true, 'c0ffee02'));
  }, 300_000);
  afterAll(async () => {
    await t?.kill();
  });

  it('the symbol file carries .eh_frame; bt from usleep through parse and validate (both patched) to answer and main', async () => {
    const g = writeGdbSymbolFile(collectDebugInfo(t.pid), dir);
    expect(g.ehFrame).toBe(true);
    const frames = await tool('readelf', ['-W', '--debug-dump=frames', g.path]);
    expect(frames).not.toMatch(/warning|error/i);
    expect(frames.match(/ FDE /g)?.length).toBeGreaterThanOrEqual(2);
    const threads = await slowBacktraces(t, g.path);
    const main = threads.map(names).find((n) => n.includes('main'))!;
    const text = threads.flat().join('\n');
    const at = (name: string) => main.findIndex((n) => n.startsWith(name));
    expect(at('usleep'), text).toBeGreaterThanOrEqual(0);
    expect(at('parse'), text).toBeGreaterThan(at('usleep'));
    expect(at('validate'), text).toBe(at('parse') + 1);
    expect(at('answer'), text).toBe(at('validate') + 1);
    expect(at('main'), text).toBeGreaterThan(at('answer'));
    // No unknown frame between them (the system's libstdc++/libgcc_s have no symbols, not our concern).
    expect(main.slice(0, at('main') + 1)).not.toContain('??');
  }, 300_000);
});
