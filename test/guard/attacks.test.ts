/**
 * Detection: tamper with running C fixtures the way real attacks do and check that `verifyProcess`
 * reports each technique with the right structure code (design.md table).
 */
import { copyFileSync, mkdtempSync, openSync, closeSync, writeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { GuardState, VerifierCaches } from '../../src/guard/index.js';
import { killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { buildFixtures, command, findingsOf, jmpRel32, movJmp, pokeMemory, startVictim, summary, u64le, type Fixtures } from './helpers.js';

killTargetsAfterAll();

let fx: Fixtures;
const caches = new VerifierCaches();

beforeAll(async () => {
  fx = await buildFixtures();
});

describe('verify: a clean victim', () => {
  it('has no findings in any structure', async () => {
    const { t } = await startVictim(fx.victim);
    await command(t, 'run');
    const f = await findingsOf(t.pid, { caches });
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });
});

describe('verify: module code (0)', () => {
  it('finds an inline hook written through /proc/PID/mem and says where it leads', async () => {
    const { t, a } = await startVictim(fx.victim);
    expect(await command(t, 'run')).toContain('compute=16');
    pokeMemory(t.pid, a.compute, jmpRel32(a.compute, a.evil));
    expect(await command(t, 'run')).toContain('compute=-1005');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    const hook = f[0]!;
    expect(hook).toMatchObject({ code: 0, kind: 'inline-hook', severity: 'critical', symbol: 'compute', module: fx.victim });
    expect(hook.address).toBe(a.compute);
    expect(hook.destination).toMatch(/victim\+0x[0-9a-f]+ \(evil\)/);
    expect(hook.instructions?.actual[0]).toMatch(/^jmp /);
    expect(Buffer.from(hook.actual!).subarray(0, 5)).toEqual(Buffer.from(jmpRel32(a.compute, a.evil)));
    await t.kill();
  });

  it('names anonymous memory as the destination of a mov-jmp hook into shellcode', async () => {
    const { t, a } = await startVictim(fx.victim);
    const sc = BigInt(/shellcode at (0x[0-9a-f]+)/.exec(await command(t, 'shellcode'))![1]!);
    pokeMemory(t.pid, a.compute, movJmp(sc));
    expect(await command(t, 'run')).toContain('compute=42');
    const f = await findingsOf(t.pid, { caches });
    const hook = f.find((x) => x.code === 0);
    expect(hook, summary(f)).toMatchObject({ kind: 'inline-hook', symbol: 'compute' });
    expect(hook!.destination).toMatch(/^anonymous memory at 0x/);
    expect(f.some((x) => x.code === 5 && x.kind === 'anonymous-code')).toBe(true);
    await t.kill();
  });

  it('reports INT3 as a benign breakpoint only while the process is traced', async () => {
    const { t, a } = await startVictim(fx.victim);
    pokeMemory(t.pid, a.compute + 4n, Uint8Array.of(0xcc));
    const untraced = await findingsOf(t.pid, { caches, structures: [0] });
    expect(untraced.length, summary(untraced)).toBe(1);
    expect(untraced[0]).toMatchObject({ code: 0, kind: 'modified', severity: 'high' });
    const tracer = await startTarget(fx.tracer, [String(t.pid)]);
    const traced = await findingsOf(t.pid, { caches, structures: [0] });
    expect(traced.length, summary(traced)).toBe(1);
    expect(traced[0]).toMatchObject({ code: 0, kind: 'breakpoint', severity: 'info' });
    expect(traced[0]!.detail).toContain(`pid ${tracer.pid}`);
    await tracer.kill();
    await t.kill();
  });

  it('finds a mapped library file modified on disk (first-seen identity)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'guard-id-'));
    const lib = join(dir, 'libpre.so');
    copyFileSync(fx.preload, lib);
    const { t } = await startVictim(fx.victim, { ...process.env, LD_PRELOAD: lib });
    const state = new GuardState(null, true);
    const before = await findingsOf(t.pid, { caches: new VerifierCaches(), state, structures: [0] });
    expect(before, summary(before)).toEqual([]);
    // Change one byte of the .comment section (not mapped): the file's content changes, the code does not.
    const elf = parseElf(readFileSync(lib));
    const comment = elf.findSection('.comment')!;
    const fd = openSync(lib, 'r+');
    writeSync(fd, Uint8Array.of(0x58), 0, 1, Number(comment.offset));
    closeSync(fd);
    const after = await findingsOf(t.pid, { caches: new VerifierCaches(), state, structures: [0] });
    expect(after.length, summary(after)).toBe(1);
    expect(after[0]).toMatchObject({ code: 0, kind: 'file-changed', severity: 'critical', module: lib });
    await t.kill();
  });
});

describe('verify: read-only data (1), RELRO (2), export table (4)', () => {
  it('finds a changed string constant as read-only data', async () => {
    const { t, a } = await startVictim(fx.victim);
    pokeMemory(t.pid, a.message, new TextEncoder().encode('HELLO'));
    expect(await command(t, 'run')).toContain('msg=HELLO from victim');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 1, kind: 'modified', symbol: 'message' });
    await t.kill();
  });

  it('finds a redirected pointer in relocated read-only data', async () => {
    const { t, a } = await startVictim(fx.victim);
    pokeMemory(t.pid, a.table + 8n, u64le(a.message));
    expect(await command(t, 'run')).toContain('table=hello from victim');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 2, symbol: 'table+0x8' });
    expect(f[0]!.destination).toContain('(message)');
    await t.kill();
  });

  it('finds a changed .dynsym entry as an export table change', async () => {
    const { t, a } = await startVictim(fx.victim);
    const elf = parseElf(readFileSync(fx.victim));
    const bias = a.compute - elf.getSymbol('compute').value;
    const dynsym = elf.findSection('.dynsym')!;
    // st_value of dynamic symbol 1 (offset 8 in Elf64_Sym).
    pokeMemory(t.pid, bias + dynsym.addr + 24n + 8n, u64le(0x4141n));
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 4, kind: 'modified' });
    expect(f[0]!.detail).toContain('.dynsym');
    await t.kill();
  });
});

describe('verify: import table (3)', () => {
  it('finds a GOT slot overwritten to point into the executable', async () => {
    const { t, a } = await startVictim(fx.victim);
    expect(a.gotstrtol).not.toBe(0n);
    pokeMemory(t.pid, a.gotstrtol, u64le(a.fake_strtol));
    expect(await command(t, 'run')).toContain('strtol=666');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 3, kind: 'got-hook', symbol: 'strtol', severity: 'high', address: a.gotstrtol });
    expect(f[0]!.destination).toContain('(fake_strtol)');
    expect(f[0]!.detail).toContain('libc.so.6');
    await t.kill();
  });

  it('reports a libc function overridden by LD_PRELOAD: info per bound slot, medium for interposing libc', async () => {
    const { t } = await startVictim(fx.victim, { ...process.env, LD_PRELOAD: fx.preload });
    expect(await command(t, 'run')).toContain('strtol=777');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBeGreaterThanOrEqual(2);
    expect(f.every((x) => x.code === 3 && x.kind === 'ld-preload'), summary(f)).toBe(true);
    const slots = f.filter((x) => x.severity === 'info');
    expect(slots.some((x) => x.symbol === 'strtol' && x.module === fx.victim)).toBe(true);
    expect(slots[0]!.detail).toContain('interposed by LD_PRELOAD');
    // Issue #14: a preload that interposes C library symbols is at least medium (one finding per library).
    expect(f.filter((x) => x.severity === 'medium').map((x) => x.module)).toEqual([fx.preload]);
    await t.kill();
  });
});

describe('verify: injected executable memory (5) and hidden modules (6)', () => {
  it('finds anonymous r-x shellcode and an rwx mapping', async () => {
    const { t } = await startVictim(fx.victim);
    const sc = BigInt(/at (0x[0-9a-f]+)/.exec(await command(t, 'shellcode'))![1]!);
    const rwx = BigInt(/at (0x[0-9a-f]+)/.exec(await command(t, 'rwx'))![1]!);
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(2);
    expect(f.find((x) => x.address === sc)).toMatchObject({ code: 5, kind: 'anonymous-code', severity: 'high' });
    expect(f.find((x) => x.address === rwx)).toMatchObject({ code: 5, kind: 'wx-memory', severity: 'high' });
    expect(f.find((x) => x.address === sc)!.instructions!.actual).toEqual(['mov eax, 0x2a', 'ret']);
    await t.kill();
  });

  it('finds an ELF loaded by hand from a memfd (5 and 6)', async () => {
    const { t } = await startVictim(fx.victim);
    expect(await command(t, `memfd ${fx.payload}`)).toContain('status=0 ret=42');
    const f = await findingsOf(t.pid, { caches });
    expect(f.some((x) => x.code === 5 && x.kind === 'memfd-code'), summary(f)).toBe(true);
    expect(f.some((x) => x.code === 6 && x.kind === 'hidden-module' && x.module === '/memfd:payload'), summary(f)).toBe(true);
    expect(f.every((x) => x.code === 5 || x.code === 6), summary(f)).toBe(true);
    await t.kill();
  });

  it('finds an ELF file mapped by hand without dlopen as a hidden module (6)', async () => {
    const { t } = await startVictim(fx.victim);
    expect(await command(t, `mapfile ${fx.payload}`)).toContain('status=0 ret=42');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 6, kind: 'hidden-module', module: fx.payload, severity: 'high' });
    await t.kill();
  });
});

describe('verify: credentials (8)', () => {
  it('finds effective root with an unprivileged real uid (no baseline needed)', async () => {
    const { t } = await startVictim(fx.victim);
    expect(await command(t, 'fakeroot')).toBe('fakeroot status=0');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 8, kind: 'effective-root', severity: 'critical' });
    await t.kill();
  });

  it('finds a privilege gain since the baseline was taken, not the drop before it', async () => {
    const { t } = await startVictim(fx.victim);
    const state = new GuardState(null, true);
    expect(await command(t, 'drop')).toBe('drop status=0');
    expect(await findingsOf(t.pid, { caches, state, structures: [8] })).toEqual([]);
    expect(await command(t, 'escalate')).toBe('escalate status=0');
    const f = await findingsOf(t.pid, { caches, state, structures: [8] });
    expect(f.length, summary(f)).toBeGreaterThanOrEqual(1);
    expect(f.every((x) => x.code === 8 && x.kind === 'credentials-changed')).toBe(true);
    expect(f.some((x) => x.detail.startsWith('effective uid'))).toBe(true);
    await t.kill();
  });
});

describe('verify: vDSO (9)', () => {
  it('finds a patched vDSO', async () => {
    const { t } = await startVictim(fx.victim);
    const maps = readFileSync(`/proc/${t.pid}/maps`, 'utf8');
    const start = BigInt(`0x${/^([0-9a-f]+)-[0-9a-f]+ [^\n]*\[vdso\]$/m.exec(maps)![1]}`);
    pokeMemory(t.pid, start + 0x900n, Uint8Array.of(0xcc, 0xcc));
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 9, kind: 'vdso-modified', module: '[vdso]', offset: 0x900n });
    await t.kill();
  });
});

describe('verify: signal handlers (7)', () => {
  it('finds a handler pointing into injected code (reading handlers briefly stops the target)', async () => {
    const { t } = await startVictim(fx.victim);
    const h = BigInt(/at (0x[0-9a-f]+)/.exec(await command(t, 'sighandler'))![1]!);
    const f = await findingsOf(t.pid, { caches, allowPtrace: true });
    const sig = f.find((x) => x.code === 7);
    expect(sig, summary(f)).toMatchObject({ kind: 'handler-outside-module', symbol: 'SIGUSR2', address: h, severity: 'high' });
    expect(sig!.destination).toMatch(/^anonymous memory/);
    expect(f.every((x) => x.code === 7 || x.code === 5), summary(f)).toBe(true);
    // The target still works after the check.
    expect(await command(t, 'run')).toContain('compute=16');
    await t.kill();
  });

  it('accepts handlers in module code (a multi-threaded program with default handlers and node)', async () => {
    const node = await startTarget('/usr/bin/node', ['-e', 'process.on("SIGUSR1", () => {}); console.log("ready"); setInterval(() => {}, 1000)']);
    const f = await findingsOf(node.pid, { caches, allowPtrace: true, structures: [7] });
    expect(f, summary(f)).toEqual([]);
    await node.kill();
  });
});

describe('verify: text relocations (DT_TEXTREL)', () => {
  it('verifies code with text relocations clean by applying them, and sees a change to a relocated word', async () => {
    const { compile } = await import('../helpers/native.js');
    // Not `shared: true`: that adds -fPIC, which would remove the text relocations.
    const lib = await compile({ file: 'guard/textrel.c', flags: ['-O2', '-mcmodel=large', '-fno-pic', '-shared', '-Wl,-z,notext'], name: 'libtextrel.so' });
    const prog = await compile({ file: 'guard/textrel-main.c', extraFiles: [lib], flags: ['-O2', `-Wl,-rpath,${join(lib, '..')}`], name: 'textrel-main' });
    const t = await startTarget(prog);
    expect(t.output()).toMatch(/^ready 10 0x/m);
    const clean = await findingsOf(t.pid, { caches });
    expect(clean, summary(clean)).toEqual([]);
    // Re-point the absolute address in textrel_address() (R_X86_64_64 in .text) elsewhere.
    const elf = parseElf(readFileSync(lib));
    expect(elf.dynamic?.textrel).toBe(true);
    const reloc = elf.dynamicRelocations.rela.find((r) => r.type === 1 && r.symbol?.name === 'textrel_value')!;
    const libBase = BigInt(`0x${new RegExp(`^([0-9a-f]+)-[0-9a-f]+ r--p 00000000 [^\\n]*${lib.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm').exec(readFileSync(`/proc/${t.pid}/maps`, 'utf8'))![1]}`);
    pokeMemory(t.pid, libBase + reloc.offset, u64le(0x4141414141n));
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 0, module: lib });
    await t.kill();
  });
});

describe('verify: a hostile target cannot hang or crash the verifier', () => {
  it('survives a link_map chain made into a loop and reports the modules it no longer lists', async () => {
    const { ProcessContext, checkOptions, readLinkMap } = await import('../../src/guard/index.js');
    const { t } = await startVictim(fx.victim);
    const ctx = new ProcessContext(t.pid, checkOptions({ caches }));
    const lm = readLinkMap(ctx);
    ctx.close();
    expect(lm.entries.length).toBeGreaterThanOrEqual(4);
    expect(lm.entries[0]!.name).toBe('');
    // l_next of the first entry points back to itself; l_name of the second to unmapped memory.
    pokeMemory(t.pid, lm.entries[0]!.self + 24n, u64le(lm.entries[0]!.self));
    pokeMemory(t.pid, lm.entries[1]!.self + 8n, u64le(0x10n));
    const f = await findingsOf(t.pid, { caches, structures: [3, 6] });
    expect(f.some((x) => x.code === 6 && x.kind === 'hidden-module' && /libc\.so/.test(x.module ?? '')), summary(f)).toBe(true);
    await t.kill();
  });

  it('reports an unreadable r_debug as unverifiable instead of failing', async () => {
    const { ProcessContext, checkOptions, readLinkMap } = await import('../../src/guard/index.js');
    const { t } = await startVictim(fx.victim);
    const ctx = new ProcessContext(t.pid, checkOptions({ caches }));
    const { rDebug } = readLinkMap(ctx);
    ctx.close();
    pokeMemory(t.pid, rDebug! + 8n, u64le(0xdead0000n)); // r_map → unmapped
    const f = await findingsOf(t.pid, { caches, structures: [3, 6] });
    expect(f.length, summary(f)).toBeGreaterThanOrEqual(1);
    expect(f.every((x) => x.kind === 'unverifiable' || x.kind === 'hidden-module'), summary(f)).toBe(true);
    expect(f.some((x) => x.code === 6 && x.kind === 'unverifiable'), summary(f)).toBe(true);
    await t.kill();
  });
});

describe('verify: uprobes are benign breakpoints', () => {
  const EVENTS = '/sys/kernel/tracing/uprobe_events';
  const writable = (() => {
    try {
      closeSync(openSync(EVENTS, 'a'));
      return true;
    } catch {
      return false;
    }
  })();

  it.skipIf(!writable)('reports the INT3 of a registered uprobe as an info breakpoint (needs tracefs)', async () => {
    const { t, a } = await startVictim(fx.victim);
    const elf = parseElf(readFileSync(fx.victim));
    const sym = elf.getSymbol('compute');
    const off = elf.vaddrToOffset(sym.value)!;
    const name = `hp_guard_${process.pid}`;
    const fd = openSync(EVENTS, 'a');
    writeSync(fd, `p:uprobes/${name} ${fx.victim}:0x${off.toString(16)}\n`);
    closeSync(fd);
    const enable = `/sys/kernel/tracing/events/uprobes/${name}/enable`;
    try {
      const e = openSync(enable, 'w');
      writeSync(e, '1');
      closeSync(e);
      expect(await command(t, 'run')).toContain('compute=16');
      const f = await findingsOf(t.pid, { caches: new VerifierCaches(), structures: [0] });
      expect(f.length, summary(f)).toBe(1);
      expect(f[0]).toMatchObject({ code: 0, kind: 'breakpoint', severity: 'info', address: a.compute });
      expect(f[0]!.detail).toContain('uprobe');
    } finally {
      try {
        const e = openSync(enable, 'w');
        writeSync(e, '0');
        closeSync(e);
      } catch {
        // not enabled
      }
      const d = openSync(EVENTS, 'a');
      writeSync(d, `-:uprobes/${name}\n`);
      closeSync(d);
    }
    await t.kill();
  });
});
