import { execFile } from 'node:child_process';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProcessError } from '../../src/errors.js';
import {
  MemoryReadError,
  enumerateProcessIds,
  openProcess,
  readMemory,
  readProcStat,
  type Process,
} from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';

const run = promisify(execFile);
killTargetsAfterAll();

/** Symbol values from `nm` (test oracle, independent of the code under test). */
async function nmSymbols(path: string): Promise<Map<string, bigint>> {
  const { stdout } = await run('nm', ['--defined-only', path]);
  const out = new Map<string, bigint>();
  for (const line of stdout.split('\n')) {
    const m = /^([0-9a-f]+) \w (\S+)$/.exec(line);
    if (m) out.set(m[2]!, BigInt(`0x${m[1]}`));
  }
  return out;
}

function printed(t: Target, name: string): bigint {
  const m = new RegExp(`^${name}=(0x[0-9a-f]+)$`, 'm').exec(t.output());
  if (!m) throw new Error(`target did not print ${name}: ${t.output()}`);
  return BigInt(m[1]!);
}

let lib: string;
let prog: string;
let progPie: string;

beforeAll(async () => {
  lib = await compile({ file: 'process-inspect/lib.c', shared: true, name: 'libinspect.so', flags: ['-O2', '-g0'] });
  prog = await compile({ file: 'process-inspect/target.c', flags: ['-O2', '-no-pie', '-fno-pie'], name: 'target-nopie' });
  progPie = await compile({ file: 'process-inspect/target.c', flags: ['-O2', '-fpie', '-pie'], name: 'target-pie' });
});

describe.each([
  ['PIE', () => progPie],
  ['non-PIE', () => prog],
])('a live %s target', (_label, getProg) => {
  let t: Target;
  let p: Process;
  beforeAll(async () => {
    t = await startTarget(getProg(), [lib]);
    p = openProcess(t.pid);
  });
  afterAll(async () => {
    p?.close();
    await t?.kill();
  });

  it('lists the mappings, with map_files paths for file mappings', () => {
    const maps = p.enumerateMappings();
    expect(maps.length).toBeGreaterThan(10);
    for (let i = 1; i < maps.length; i++) expect(maps[i]!.start).toBeGreaterThanOrEqual(maps[i - 1]!.end);
    const text = maps.find((m) => m.path === getProg() && m.protection.execute);
    expect(text).toBeDefined();
    expect(text!.perms).toBe('r-xp');
    expect(text!.mapFilesPath).toBe(`/proc/${t.pid}/map_files/${text!.start.toString(16)}-${text!.end.toString(16)}`);
    expect(maps.some((m) => m.path === '[stack]')).toBe(true);
    expect(maps.some((m) => m.path === '[vdso]')).toBe(true);
  });

  it('lists 5 threads', () => {
    const threads = p.enumerateThreads();
    expect(threads.map((x) => x.tid)).toContain(t.pid);
    expect(threads).toHaveLength(5);
  });

  it('finds executable, library, loader and vDSO with correct load bias', async () => {
    const mods = p.enumerateModules();
    const exe = p.getMainModule(mods);
    expect(exe.path).toBe(getProg());
    expect(exe.kind).toBe('executable');
    const syms = await nmSymbols(getProg());
    for (const name of ['main', 'static_helper', 'worker', 'global_value']) {
      expect(exe.loadBias + syms.get(name)!, name).toBe(printed(t, name));
    }
    if (_label === 'non-PIE') expect(exe.loadBias).toBe(0n);
    else expect(exe.loadBias).not.toBe(0n);
    const libMod = p.getModuleByName('libinspect.so', mods);
    const libSyms = await nmSymbols(lib);
    expect(libMod.loadBias + libSyms.get('lib_add')!).toBe(printed(t, 'lib_add'));
    expect(p.findModuleByAddress(printed(t, 'lib_add'), mods)?.path).toBe(lib);
    expect(p.findModuleByAddress(printed(t, 'main'), mods)?.kind).toBe('executable');
    expect(p.findModuleByAddress(0x10n, mods)).toBeUndefined();
    expect(() => p.getModuleByAddress(0x10n, mods)).toThrow(ProcessError);
    const loader = mods.find((m) => m.kind === 'loader');
    expect(loader?.name).toBe('ld-linux-x86-64.so.2');
    expect(loader?.loadBias).toBe(p.getAuxv().base);
    const vdso = mods.find((m) => m.kind === 'vdso');
    expect(vdso?.base).toBe(p.getAuxv().sysinfoEhdr);
    expect(vdso?.buildId).toMatch(/^[0-9a-f]{40}$/);
    expect(mods.some((m) => m.name === 'libc.so.6')).toBe(true);
    const { stdout } = await run('readelf', ['-n', getProg()]);
    expect(stdout).toContain(`Build ID: ${exe.buildId}`);
  });

  it('reads the status, auxv, exe and cmdline', () => {
    const s = p.getStatus();
    expect(s.pid).toBe(t.pid);
    expect(s.tgid).toBe(t.pid);
    expect(s.ppid).toBe(process.pid);
    expect(s.tracerPid).toBe(0);
    expect(s.uid.real).toBe(process.getuid!());
    expect(s.threads).toBe(5);
    expect(typeof s.capBnd).toBe('bigint');
    expect(s.capBnd).not.toBe(0n);
    expect(s.name).toMatch(/^target/);
    const a = p.getAuxv();
    expect(a.entry).toBe(p.getMainModule().loadBias + BigInt(`0x${readFileSync(getProg()).readBigUInt64LE(24).toString(16)}`));
    expect(a.entries.find((e) => e.name === 'AT_PAGESZ')?.value).toBe(4096n);
    expect(p.getExePath()).toBe(getProg());
    expect(p.getExeDeleted()).toBe(false);
    expect(p.getCmdline()).toEqual([getProg(), lib]);
  });

  it('reads memory: code equals the file, large reads, typed errors at unmapped addresses', () => {
    const exe = p.getMainModule();
    const text = exe.mappings.find((m) => m.protection.execute)!;
    const len = Number(text.end - text.start);
    const mem = p.readMemory(text.start, len);
    const file = readFileSync(getProg());
    const off = Number(text.fileOffset);
    expect(Buffer.from(mem).equals(file.subarray(off, Math.min(off + len, file.length)))).toBe(len <= file.length - off);
    // global_value = 42
    expect(Buffer.from(p.readMemory(printed(t, 'global_value'), 4)).readInt32LE(0)).toBe(42);
    // libc is large: a multi-chunk read of all its mappings, one by one.
    const libc = p.getModuleByName('libc.so.6');
    let total = 0;
    for (const m of libc.mappings) total += p.readMemory(m.start, Number(m.end - m.start)).byteLength;
    expect(total).toBeGreaterThan(1 << 20);
    expect(() => p.readMemory(0n, 16)).toThrow(MemoryReadError);
    try {
      p.readMemory(0x1000n, 8);
    } catch (e) {
      expect(e).toBeInstanceOf(MemoryReadError);
      expect((e as MemoryReadError).code).toBe('PROCESS_MEMORY_UNREADABLE');
      expect((e as MemoryReadError).address).toBe(0x1000n);
    }
    // A read that runs off the end of a mapping into a gap names the first missing byte.
    const maps = p.enumerateMappings();
    const gapIdx = maps.findIndex((m, i) => m.protection.read && maps[i + 1] !== undefined && maps[i + 1]!.start > m.end && m.path !== '[vsyscall]');
    const before = maps[gapIdx]!;
    let err: unknown;
    try {
      p.readMemory(before.end - 16n, 64);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MemoryReadError);
    expect((err as MemoryReadError).address).toBe(before.end);
    expect(p.readMemoryPartial(before.end - 16n, 64).byteLength).toBe(16);
    expect(readMemory(t.pid, printed(t, 'global_value'), 4)[0]).toBe(42);
  });

  it('reads smaps: a written code page shows up as Anonymous in its file mapping', () => {
    const s = p.enumerateSmaps();
    expect(s.length).toBe(p.enumerateMappings().length);
    const stack = s.find((e) => e.mapping.path === '[stack]')!;
    expect(stack.privateDirty).toBeGreaterThan(0);
    const textOf = (list: typeof s) => list.find((e) => e.mapping.path === getProg() && e.mapping.protection.execute)!;
    const text = textOf(s);
    expect(text.anonymous).toBe(0);
    expect(text.vmFlags).toContain('ex');
    expect(text.size).toBe(Number(text.mapping.end - text.mapping.start));
    // Write the byte that is already there (no behaviour change): the kernel makes a private copy.
    const main = printed(t, 'main');
    const fd = openSync(`/proc/${t.pid}/mem`, 'r+');
    try {
      // Node 20 writeSync does not accept a bigint position (readSync does).
      writeSync(fd, p.readMemory(main, 1), 0, 1, Number(main));
    } finally {
      closeSync(fd);
    }
    expect(textOf(p.enumerateSmaps()).anonymous).toBe(4096);
  });
});

describe('processes in unusual states', () => {
  it('resolves a deleted executable through map_files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-inspect-'));
    try {
      const copy = join(dir, 'doomed');
      copyFileSync(progPie, copy);
      await run('chmod', ['+x', copy]);
      const t = await startTarget(copy, [lib]);
      unlinkSync(copy);
      const p = openProcess(t.pid);
      try {
        const exe = p.getMainModule();
        expect(exe.deleted).toBe(true);
        expect(exe.path).toBe(copy);
        expect(p.getExeDeleted()).toBe(true);
        const syms = await nmSymbols(progPie);
        expect(exe.loadBias + syms.get('main')!).toBe(printed(t, 'main'));
        const { stdout } = await run('readelf', ['-n', progPie]);
        expect(stdout).toContain(`Build ID: ${exe.buildId}`);
        expect(readFileSync(exe.mapFilesPath!).equals(readFileSync(progPie))).toBe(true);
      } finally {
        p.close();
        await t.kill();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives PROCESS_NOT_FOUND for a dead pid and for a process that exits while open', async () => {
    const t = await startTarget(progPie, [lib]);
    const p = openProcess(t.pid);
    const addr = printed(t, 'global_value');
    expect(p.readMemory(addr, 4)[0]).toBe(42);
    await t.kill();
    expect(p.isAlive()).toBe(false);
    for (const f of [() => p.readMemory(addr, 4), () => p.enumerateMappings(), () => p.getStatus(), () => p.enumerateModules(), () => p.enumerateThreads()]) {
      expect(f).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));
    }
    p.close();
    expect(() => openProcess(t.pid)).toThrow(expect.objectContaining({ code: 'PROCESS_NOT_FOUND' }));
    expect(() => openProcess(0x3ffffff0)).toThrow(ProcessError);
    expect(() => openProcess(-1)).toThrow(RangeError);
  });

  it('gives PROCESS_ZOMBIE for an exited, unreaped child', async () => {
    const parent = await startTarget(await compile({ file: 'process-inspect/zombie-parent.c', name: 'zombie-parent' }));
    try {
      const child = Number(/child=(\d+)/.exec(parent.output())![1]);
      expect(readProcStat(child).state).toBe('Z');
      expect(() => openProcess(child)).toThrow(expect.objectContaining({ code: 'PROCESS_ZOMBIE' }));
    } finally {
      await parent.kill();
    }
  });

  it('gives PROCESS_KERNEL_THREAD for kthreadd', (ctx) => {
    let comm: string;
    try {
      comm = readProcStat(2).comm;
    } catch {
      ctx.skip();
      return;
    }
    if (comm !== 'kthreadd') {
      console.warn('pid 2 is not kthreadd in this container: kernel-thread test skipped');
      ctx.skip();
      return;
    }
    expect(() => openProcess(2)).toThrow(expect.objectContaining({ code: 'PROCESS_KERNEL_THREAD' }));
  });

  it('lists process ids including this one', () => {
    const ids = enumerateProcessIds();
    expect(ids).toContain(process.pid);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
  });
});

describe('every process of the machine', () => {
  it('opens each one and lists its modules, or fails with a typed ProcessError', () => {
    const t0 = performance.now();
    let ok = 0;
    const codes = new Map<string, number>();
    for (const pid of enumerateProcessIds()) {
      try {
        const p = openProcess(pid);
        try {
          const mods = p.enumerateModules();
          p.enumerateThreads();
          p.getStatus();
          if (mods.length > 0) ok++;
        } finally {
          p.close();
        }
      } catch (e) {
        if (!(e instanceof ProcessError)) throw e;
        codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
      }
    }
    console.log(`inspected ${ok} processes in ${Math.round(performance.now() - t0)} ms; errors: ${JSON.stringify(Object.fromEntries(codes))}`);
    expect(ok).toBeGreaterThan(2);
  });
});
