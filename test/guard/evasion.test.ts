/**
 * The guard is hard to fool (issue #14, part B): libraries from places others can write, code that
 * is not an ELF module, foreign tracers and debug-register hooks, checks that could be blinded,
 * hooks that exist only between two checks. Each attack runs on a real process (test/fixtures/
 * guard/fool.c) and must be reported with the right structure code.
 */
import { chmodSync, chownSync, copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Guard, VerifierCaches, type GuardEvent } from '../../src/guard/index.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { buildFixtures, command, findingsOf, jmpRel32, pokeMemory, summary, type Fixtures } from './helpers.js';

killTargetsAfterAll();

let fx: Fixtures;
let fool: string;
let hwbp: string;
let threadLib: string;
const caches = new VerifierCaches();

beforeAll(async () => {
  fx = await buildFixtures();
  [fool, hwbp, threadLib] = await Promise.all([
    compile({ file: 'guard/fool.c', flags: ['-O2', '-g', '-ldl'], name: 'fool' }),
    compile({ file: 'guard/hwbp.c', flags: ['-O2'], name: 'hwbp' }),
    compile({ file: 'guard/thread-lib.c', flags: ['-O2', '-lpthread'], shared: true, name: 'libthread.so' }),
  ]);
});

interface Fool {
  t: Target;
  compute: bigint;
  evil: bigint;
  tid: number;
}

async function startFool(): Promise<Fool> {
  const t = await startTarget(fool);
  const m = /^ready compute=(0x[0-9a-f]+) evil=(0x[0-9a-f]+) tid=(\d+)$/m.exec(t.output())!;
  return { t, compute: BigInt(m[1]!), evil: BigInt(m[2]!), tid: Number(m[3]!) };
}

function scratch(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

describe('checks that can be blinded (4)', () => {
  it('a 64 GiB sparse ELF mapped r-x makes only that module unverifiable; a hook elsewhere is still found', async () => {
    const f = await startFool();
    const big = join(scratch('guard-sparse-'), 'big.so');
    copyFileSync(fx.preload, big);
    expect(await command(f.t, `sparse ${big}`)).toContain('status=0');
    pokeMemory(f.t.pid, f.compute, jmpRel32(f.compute, f.evil));
    const found = await findingsOf(f.t.pid, { caches, structures: [0, 1, 2, 4] });
    expect(found.some((x) => x.code === 0 && x.kind === 'inline-hook' && x.symbol === 'compute'), summary(found)).toBe(true);
    const big0 = found.filter((x) => x.module === big);
    expect(big0.length, summary(found)).toBe(1);
    expect(big0[0]).toMatchObject({ code: 0, kind: 'unverifiable', severity: 'medium' });
    expect(big0[0]!.detail).toContain('68719476736 bytes');
    expect(found.filter((x) => x.kind === 'unverifiable' && x.module !== big), summary(found)).toEqual([]);
    await f.t.kill();
  });

  it('a library file truncated after it was mapped is a finding about that module only', async () => {
    const f = await startFool();
    const lib = join(scratch('guard-trunc-'), 'trunc.so');
    copyFileSync(fx.preload, lib);
    expect(await command(f.t, `truncate ${lib}`)).toContain('status=0');
    pokeMemory(f.t.pid, f.compute, jmpRel32(f.compute, f.evil));
    const found = await findingsOf(f.t.pid, { caches, structures: [0, 1, 2, 4] });
    expect(found.some((x) => x.code === 0 && x.kind === 'inline-hook' && x.symbol === 'compute'), summary(found)).toBe(true);
    const mine = found.filter((x) => x.module === lib);
    expect(mine.length, summary(found)).toBeGreaterThanOrEqual(1);
    expect(mine.every((x) => x.kind === 'unverifiable' && x.severity === 'medium'), summary(mine)).toBe(true);
    await f.t.kill();
  });
});

describe('debug-register and INT3 hooks by a foreign tracer (7)', () => {
  it('reports a tracer attached to one thread that armed a hardware breakpoint, naming the tracer', async () => {
    const f = await startFool();
    const tracer = await startTarget(hwbp, [String(f.tid), `0x${f.compute.toString(16)}`], { readyText: 'ready attached' });
    // No code byte changed: structure 0 is clean.
    const code = await findingsOf(f.t.pid, { caches, structures: [0] });
    expect(code, summary(code)).toEqual([]);
    for (const allowPtrace of [false, true]) {
      const found = await findingsOf(f.t.pid, { caches, structures: [7], allowPtrace });
      expect(found.length, summary(found)).toBe(1);
      expect(found[0]).toMatchObject({ code: 7, kind: 'foreign-tracer', severity: 'high' });
      expect(found[0]!.detail).toContain(`pid ${tracer.pid} (hwbp`);
      expect(found[0]!.detail).toContain(`thread(s) ${f.tid} of 2`);
    }
    expect(await command(f.t, 'run')).toContain('compute=16');
    await tracer.kill();
    await f.t.kill();
  });

  it('reads the debug registers when it can freeze the process: DR0/DR7 left armed by a detached tracer, by symbol', async () => {
    // (On this kernel the breakpoint no longer fires after the detach, but DR0/DR7 keep their
    // values: what a tracer leaves behind is visible. A SIGTRAP handler makes structure 7 freeze.)
    const f = await startFool();
    expect(await command(f.t, 'traphandler')).toContain('status=0');
    const tracer = await startTarget(hwbp, [String(f.tid), `0x${f.compute.toString(16)}`, 'detach'], { readyText: 'ready detached' });
    const found = await findingsOf(f.t.pid, { caches, structures: [7], allowPtrace: true });
    expect(found.length, summary(found)).toBe(1);
    expect(found[0]).toMatchObject({ code: 7, kind: 'debug-register', severity: 'critical', symbol: 'compute', address: f.compute, module: fool });
    expect(found[0]!.detail).toContain(`thread ${f.tid}`);
    await tracer.kill();
    await f.t.kill();
  });
});

describe('code that is not an ELF module (5, 0)', () => {
  it('reports an executable mapping of a non-ELF file and of an ELF file without its header', async () => {
    const f = await startFool();
    const dir = scratch('guard-nonelf-');
    const raw = join(dir, 'code.bin');
    writeFileSync(raw, Buffer.alloc(4096, 0xc3));
    const headless = join(dir, 'headless.so');
    copyFileSync(fx.preload, headless);
    expect(await command(f.t, `mapx ${raw} 0`)).toContain('status=0');
    expect(await command(f.t, `mapx ${headless} 0x1000`)).toContain('status=0');
    const found = await findingsOf(f.t.pid, { caches });
    expect(found.length, summary(found)).toBe(2);
    expect(found.find((x) => x.module === raw)).toMatchObject({ code: 5, kind: 'non-elf-code', severity: 'high' });
    expect(found.find((x) => x.module === raw)!.instructions!.actual[0]).toBe('ret');
    expect(found.find((x) => x.module === headless)).toMatchObject({ code: 5, kind: 'headerless-elf', severity: 'high', offset: 0x1000n });
    await f.t.kill();
  });

  it('reports a loaded library whose file was rewritten in place after loading (memory equals the new file)', async () => {
    const lib = join(scratch('guard-written-'), 'libwritten.so');
    copyFileSync(threadLib, lib); // before the process starts: an ordinary library
    const f = await startFool();
    expect(await command(f.t, `dlopen ${lib}`)).toContain(' ok');
    const v = new VerifierCaches();
    const before = await findingsOf(f.t.pid, { caches: v, structures: [0] });
    expect(before, summary(before)).toEqual([]);
    await new Promise((r) => setTimeout(r, 1600)); // past the 1 s resolution of the start time
    const { parseElf } = await import('../../src/elf/index.js');
    const { openSync, writeSync, closeSync, readFileSync } = await import('node:fs');
    const elf = parseElf(readFileSync(lib));
    const beacon = elf.symbols.find((s) => s.name === 'beacon') ?? elf.getSymbol('beacon');
    const fd = openSync(lib, 'r+');
    writeSync(fd, Uint8Array.of(0xc3), 0, 1, Number(elf.vaddrToOffset(beacon.value)!));
    closeSync(fd);
    // The guard's own caches saw the mapping before: critical. A fresh verifier: high (written after start).
    const again = await findingsOf(f.t.pid, { caches: v, structures: [0] });
    expect(again.length, summary(again)).toBe(1);
    expect(again[0]).toMatchObject({ code: 0, kind: 'file-written', severity: 'critical', module: lib });
    const fresh = await findingsOf(f.t.pid, { caches: new VerifierCaches(), structures: [0] });
    expect(fresh.length, summary(fresh)).toBe(1);
    expect(fresh[0]).toMatchObject({ code: 0, kind: 'file-written', severity: 'high', module: lib });
    await f.t.kill();
  });
});

/** Structure 6 findings once `n` are there (the constructor's thread must first reach its loop). */
async function settled(pid: number, n: number): Promise<Awaited<ReturnType<typeof findingsOf>>> {
  let found = await findingsOf(pid, { caches, structures: [6] });
  for (let i = 0; i < 30 && found.length < n; i++) {
    await new Promise((r) => setTimeout(r, 100));
    found = await findingsOf(pid, { caches, structures: [6] });
  }
  return found;
}

describe('libraries from places others can write (6)', () => {
  const SYSLIB = '/usr/lib/x86_64-linux-gnu/libz.so.1';

  it('reports a library dlopen()ed from a world-writable directory, and its constructor thread', async () => {
    const f = await startFool();
    const dir = scratch('guard-ww-');
    chmodSync(dir, 0o1777);
    const lib = join(dir, 'libevil.so');
    copyFileSync(threadLib, lib);
    expect(await command(f.t, `dlopen ${lib}`)).toContain(' ok');
    const found = await settled(f.t.pid, 2);
    expect(found.length, summary(found)).toBe(2);
    expect(found.find((x) => x.kind === 'untrusted-path')).toMatchObject({ code: 6, severity: 'high', module: lib });
    expect(found.find((x) => x.kind === 'untrusted-path')!.detail).toContain('world-writable directory');
    expect(found.find((x) => x.kind === 'late-module-thread')).toMatchObject({ code: 6, severity: 'high', module: lib });
    await f.t.kill();
  });

  it('reports a byte-identical copy of a system library loaded from a world-writable directory, not the original', async () => {
    const f = await startFool();
    const dir = scratch('guard-wwcopy-');
    chmodSync(dir, 0o777);
    const copy = join(dir, 'libz.so.1');
    copyFileSync(SYSLIB, copy);
    expect(await command(f.t, `dlopen ${copy}`)).toContain(' ok');
    const found = await findingsOf(f.t.pid, { caches, structures: [0, 6] });
    expect(found.length, summary(found)).toBe(1);
    expect(found[0]).toMatchObject({ code: 6, kind: 'untrusted-path', severity: 'high', module: copy });
    const g = await startFool();
    expect(await command(g.t, `dlopen ${SYSLIB}`)).toContain(' ok');
    const clean = await findingsOf(g.t.pid, { caches, structures: [0, 6] });
    expect(clean, summary(clean)).toEqual([]);
    await f.t.kill();
    await g.t.kill();
  });

  it('reports a library file owned by another user, and a late library that runs a thread from a safe place', async () => {
    const dir = scratch('guard-owner-');
    const owned = join(dir, 'libowned.so');
    copyFileSync(fx.preload, owned);
    chownSync(owned, 65534, 65534);
    const safe = join(dir, 'libsafe.so');
    copyFileSync(threadLib, safe);
    const f = await startFool();
    expect(await command(f.t, `dlopen ${owned}`)).toContain(' ok');
    expect(await command(f.t, `dlopen ${safe}`)).toContain(' ok');
    const found = await settled(f.t.pid, 2);
    expect(found.length, summary(found)).toBe(2);
    expect(found.find((x) => x.module === owned)).toMatchObject({ kind: 'untrusted-path', severity: 'high' });
    expect(found.find((x) => x.module === owned)!.detail).toContain('owned by nobody');
    expect(found.find((x) => x.module === safe)).toMatchObject({ kind: 'late-module-thread', severity: 'high' });
    await f.t.kill();
  });
});

describe('time-of-check evasion: the continuous code-write signal (guard)', () => {
  const guards: Guard[] = [];
  afterEach(async () => {
    await Promise.all(guards.splice(0).map((g) => g.stop()));
  });

  // The hook lives 15 s, far less than the 10 min interval: only the signal can find it, and a loaded
  // machine still has time to finish the triggered check (and its re-check) while it exists.
  it('reports a hook that exists for 15 s only, with a 10 min interval, and its removal', async () => {
    const f = await startFool();
    const events: GuardEvent[] = [];
    const guard = new Guard({ pids: [f.t.pid], intervalMs: 600_000, signalIntervalMs: 200, recheckDelayMs: 50, rescanMs: 100, allowPtrace: false, onEvent: (e) => events.push(e) });
    guards.push(guard);
    guard.start();
    while (!events.some((e) => e.type === 'process' && e.event === 'watch')) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 600)); // the signal's baseline is taken
    const before = f.t.output().length;
    f.t.child.stdin!.write('selfhook 15000\n');
    await f.t.waitFor({ test: (o: string) => /selfhook status/.test(o.slice(before)) } as unknown as RegExp, 60_000);
    expect(f.t.output().slice(before)).toContain('status=0 during=-1005 after=16');
    for (let i = 0; i < 300 && !events.some((e) => e.type === 'resolved'); i++) await new Promise((r) => setTimeout(r, 100));
    const found = events.flatMap((e) => (e.type === 'finding' ? [e.finding] : []));
    expect(found.length, `${summary(found)} events: ${JSON.stringify(events.map((e) => e.type))} polls ${guard.signal.polls} triggers ${guard.signal.triggers}`).toBe(1);
    expect(found[0]).toMatchObject({ code: 0, kind: 'inline-hook', symbol: 'compute', address: f.compute });
    expect(events.some((e) => e.type === 'resolved' && e.code === 0)).toBe(true);
    expect(guard.signal.triggers).toBeGreaterThanOrEqual(2);
    await f.t.kill();
  }, 120_000);
});
