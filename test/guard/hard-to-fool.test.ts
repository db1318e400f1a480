/**
 * Issue #14, "The guard is hard to fool" (part A): techniques that leave every import slot and
 * code byte as the guard expected it before — function pointers in writable data, interposition
 * through the lookup scope (LD_AUDIT, lazily bound LD_PRELOAD), edits of the dynamic linker's own
 * link_map. Each test runs a real process and fails on the guard without the corresponding check.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { VerifierCaches } from '../../src/guard/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { buildFixtures, command, findingsOf, summary, type Fixtures } from './helpers.js';

killTargetsAfterAll();

let fx: Fixtures;
let hook: string;
let audit: string;
let lazy: string;
let forge: string;
let callbacks: string;
const caches = new VerifierCaches();

beforeAll(async () => {
  [fx, hook, audit, lazy, forge, callbacks] = await Promise.all([
    buildFixtures(),
    compile({ file: 'guard/hard/hook.c', flags: ['-O2'], shared: true, name: 'libhook.so' }),
    compile({ file: 'guard/hard/audit.c', flags: ['-O2'], shared: true, name: 'libaudit.so' }),
    compile({ file: 'guard/hard/lazy.c', flags: ['-O2', '-Wl,-z,lazy'], name: 'lazy' }),
    compile({ file: 'guard/hard/forge.c', flags: ['-O2', '-Wl,-z,lazy', '-ldl'], name: 'forge' }),
    compile({ file: 'guard/hard/callbacks.c', flags: ['-O2', '-Wl,-z,norelro'], name: 'callbacks' }),
  ]);
});

describe('function pointers in writable memory (3)', () => {
  it('accepts a callback re-targeted to the program\'s own code, finds one re-targeted to injected code', async () => {
    const t = await startTarget(callbacks);
    const handler = BigInt(/handler=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    expect(await command(t, 'retarget')).toBe('retarget ok');
    expect(await command(t, 'run')).toBe('run handler=105');
    const clean = await findingsOf(t.pid, { caches });
    expect(clean, summary(clean)).toEqual([]);
    await command(t, 'hookdata');
    expect(await command(t, 'run')).toBe('run handler=42');
    const f = (await findingsOf(t.pid, { caches })).filter((x) => x.code === 3);
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ kind: 'pointer-hook', severity: 'high', module: callbacks, symbol: 'handler', address: handler });
    expect(f[0]!.destination).toMatch(/^anonymous memory at 0x/);
    expect(f[0]!.detail).toContain('(compute)');
    await t.kill();
  });

  it('finds a writable .fini_array entry pointing into the heap', async () => {
    const t = await startTarget(callbacks);
    const fini = BigInt(/fini=(0x[0-9a-f]+)/.exec(t.output())![1]!);
    await command(t, 'hookfini');
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(1);
    expect(f[0]).toMatchObject({ code: 3, kind: 'pointer-hook', severity: 'high', address: fini });
    expect(f[0]!.detail).toContain('.fini_array');
    await t.kill();
  });

  it('finds a stdio FILE whose vtable (or wide vtable) was moved outside __libc_IO_vtables', async () => {
    const t = await startTarget(callbacks);
    const vt = BigInt(/at (0x[0-9a-f]+)/.exec(await command(t, 'filevt'))![1]!);
    const wvt = BigInt(/at (0x[0-9a-f]+)/.exec(await command(t, 'widevt'))![1]!);
    const f = await findingsOf(t.pid, { caches });
    expect(f.length, summary(f)).toBe(2);
    expect(f.find((x) => x.symbol === 'FILE.vtable'), summary(f)).toMatchObject({ code: 3, kind: 'file-vtable', severity: 'high', address: vt });
    expect(f.find((x) => x.symbol === 'FILE._wide_data._wide_vtable'), summary(f)).toMatchObject({ code: 3, kind: 'file-vtable', severity: 'high', address: wvt });
    expect(f[0]!.destination).toMatch(/heap/);
    await t.kill();
  });
});

describe('interposition without touching an import slot (3)', () => {
  it('reports an LD_PRELOAD library interposing libc while the slot is still unbound (medium)', async () => {
    const t = await startTarget(lazy, [], { env: { ...process.env, LD_PRELOAD: fx.preload } });
    const f = await findingsOf(t.pid, { caches });
    const scope = f.filter((x) => x.kind === 'ld-preload' && x.severity === 'medium');
    expect(scope.length, summary(f)).toBe(1);
    expect(scope[0]).toMatchObject({ code: 3, module: fx.preload, symbol: 'strtol' });
    expect(scope[0]!.detail).toContain('bound yet or not');
    expect(f.every((x) => x.code === 3 && x.kind === 'ld-preload'), summary(f)).toBe(true);
    expect(await command(t, 'run')).toContain('strtol=777');
    await t.kill();
  });

  it('reports an rtld-audit library (LD_AUDIT) that redirects a binding (medium ld-audit)', async () => {
    const t = await startTarget(lazy, [], { env: { ...process.env, LD_AUDIT: audit } });
    expect(await command(t, 'run')).toContain('strtol=444');
    const f = await findingsOf(t.pid, { caches });
    const a = f.filter((x) => x.kind === 'ld-audit');
    expect(a.length, summary(f)).toBe(1);
    expect(a[0]).toMatchObject({ code: 3, severity: 'medium', module: audit, symbol: 'la_version' });
    expect(a[0]!.detail).toContain('named by LD_AUDIT');
    await t.kill();
  });
});

describe('edits of the dynamic linker\'s own data (3, 6)', () => {
  it('still finds a GOT hook after the hooking library was moved ahead of libc and renamed to libc in link_map', async () => {
    const t = await startTarget(forge);
    expect(await command(t, `dlopen ${hook}`)).toBe('dlopen ok');
    const clean = await findingsOf(t.pid, { caches });
    expect(clean, summary(clean)).toEqual([]);
    await command(t, 'rename');
    await command(t, 'move');
    await command(t, 'hook');
    expect(await command(t, 'run')).toContain('strtol=555');
    const f = await findingsOf(t.pid, { caches });
    expect(f.some((x) => x.code === 6 && x.kind === 'forged-link-map' && x.module === hook && x.symbol === 'l_name' && x.severity === 'high'), summary(f)).toBe(true);
    // The hooked slot: libhook is no start-up module by the files, so binding to it is a hook —
    // reported either on the slot (got-hook) or on the scope (preload position, libc interposed).
    expect(f.some((x) => x.code === 3 && x.severity === 'high' && (x.kind === 'got-hook' || x.kind === 'ld-preload') && x.module === (x.kind === 'got-hook' ? forge : hook)), summary(f)).toBe(true);
    await t.kill();
  });

  it('finds a hooking library moved into the preload position of link_map (names intact)', async () => {
    const t = await startTarget(forge);
    expect(await command(t, `dlopen ${hook}`)).toBe('dlopen ok');
    await command(t, 'move');
    await command(t, 'hook');
    expect(await command(t, 'run')).toContain('strtol=555');
    const f = await findingsOf(t.pid, { caches });
    // Ahead of libc but in no DT_NEEDED and named by no LD_PRELOAD: a preload nobody asked for.
    const p = f.filter((x) => x.code === 3 && x.kind === 'ld-preload' && x.severity === 'high' && x.module === hook);
    expect(p.length, summary(f)).toBe(1);
    expect(p[0]!.detail).toContain('neither LD_PRELOAD');
    await t.kill();
  });
});
