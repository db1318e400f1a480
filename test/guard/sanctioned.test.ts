/**
 * Structure 10, sanctioned patches: a signed patch applied by the engine verifies clean (its site
 * is not an inline hook, its arena is not injected code); an untrusted signer, a tampered arena
 * and a tampered site are findings.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseElf } from '../../src/elf/index.js';
import { GuardState, VerifierCaches, restoreFinding } from '../../src/guard/index.js';
import { RECORD_MAPS_PATH, RECORD_SLOT_SIZE, encodeRecordSlot, readRecordFromMappings, type PatchRecord } from '../../src/patch/engine/index.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import type { PatchPlan } from '../../src/patch/plan.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { applyPackageFile, recoverProcesses, removeFromProcesses } from '../../src/patch/updater/index.js';
import { listPatches } from '../../src/patch/engine/index.js';
import { openProcess } from '../../src/process/index.js';
import { runCli } from '../helpers/cli.js';
import { killTargetsAfterAll } from '../helpers/native.js';
import { buildFixtures, command, findingsOf, pokeMemory, startVictim, summary, type Fixtures } from './helpers.js';

killTargetsAfterAll();

let fx: Fixtures;
let pkgPath: string;
let pubKey: string;
let otherPub: string;

/** mov eax, 42; ret */
const RETURN_42 = Uint8Array.of(0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3);

/** A plan replacing `compute` of the victim by `return 42` (plain 5-byte entry). */
function plan(exe: string): PatchPlan {
  const bytes = new Uint8Array(readFileSync(exe));
  const elf = parseElf(bytes);
  const sym = elf.getSymbol('compute');
  return {
    target: { buildId: elf.buildId!, name: basename(exe), size: bytes.length },
    functions: [{
      name: 'compute', vaddr: sym.value, size: Number(sym.size),
      oldHash: createHash('sha256').update(elf.readVaddr(sym.value, Number(sym.size))).digest('hex'),
      entry: { kind: 'plain', siteVaddr: sym.value, switchVaddr: sym.value, expected: elf.readVaddr(sym.value, 5).slice() },
      code: RETURN_42, align: 16, relocations: [],
    }],
    data: [],
  };
}

beforeAll(async () => {
  fx = await buildFixtures();
  const dir = mkdtempSync(join(tmpdir(), 'guard-sanctioned-'));
  const key = writeKeyFiles(join(dir, 'ops.key'), { comment: 'ops' });
  pubKey = key.publicKeyFile;
  otherPub = writeKeyFiles(join(dir, 'other.key'), { comment: 'other' }).publicKeyFile;
  pkgPath = join(dir, 'compute.hpk');
  writeFileSync(pkgPath, encodePackage(signPackage(createPackage(plan(fx.victim)), readFileSync(join(dir, 'ops.key'), 'utf8'))));
});

async function patchedVictim() {
  const v = await startVictim(fx.victim);
  const report = await applyPackageFile(pkgPath, { pids: [v.t.pid], trustFiles: [pubKey] });
  expect(report.results[0]?.status, JSON.stringify(report.results)).toBe('patched');
  expect(await command(v.t, 'run')).toContain('compute=42');
  return v;
}

/** The 5 bytes at a plain patch site, as in memory. */
function readSite(pid: number, address: bigint): Uint8Array {
  const p = openProcess(pid);
  try {
    return p.readMemory(address, 5);
  } finally {
    p.close();
  }
}

/** The first `n` bytes of a function as in the file. */
function readFileBytes(exe: string, name: string, n: number): Uint8Array {
  const elf = parseElf(new Uint8Array(readFileSync(exe)));
  return elf.readVaddr(elf.getSymbol(name).value, n).slice();
}

function arenaCode(pid: number): bigint {
  const p = openProcess(pid);
  try {
    const rec = readRecordFromMappings(pid, p.enumerateMappings())!;
    return rec.patches[0]!.code.start;
  } finally {
    p.close();
  }
}

describe('verify: sanctioned patches (10)', () => {
  it('a signed patch from a trusted signer verifies clean in every structure', async () => {
    const { t } = await patchedVictim();
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });

  it('a patch by a signer that is not trusted is one finding per site, named by the patched function', async () => {
    const { t, a } = await patchedVictim();
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [otherPub] });
    expect(f.length, summary(f)).toBe(1);
    const site = f[0]!;
    expect(site.code).toBe(10);
    expect(site.kind).toBe('patch-untrusted');
    expect(site.address).toBe(a.compute);
    expect(site.symbol).toBe('compute (patch site)');
    expect(site.detail).toMatch(/^patch \S+ is signed by an untrusted signer [0-9a-f]{16}.*: trust it with --trust/);
    expect(site.patchId).toBeDefined();
    await t.kill();
  });

  it('arena code changed after the patch was applied is a finding', async () => {
    const { t } = await patchedVictim();
    const code = arenaCode(t.pid);
    pokeMemory(t.pid, code + 1n, Uint8Array.of(0x2b)); // mov eax, 43
    expect(await command(t, 'run')).toContain('compute=43');
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    const bad = f.find((x) => x.code === 10 && x.kind === 'patch-modified');
    expect(bad, summary(f)).toBeDefined();
    expect(bad!.address).toBe(code + 1n);
    await t.kill();
  });

  it('a patched site redirected elsewhere is a finding', async () => {
    const { t, a } = await patchedVictim();
    // Keep a jmp rel32 but aim it at evil().
    const rel = Number(a.evil - (a.compute + 5n));
    const b = new Uint8Array(5);
    b[0] = 0xe9;
    new DataView(b.buffer).setInt32(1, rel, true);
    pokeMemory(t.pid, a.compute, b);
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    expect(f.some((x) => x.code === 10 && x.kind === 'patch-site-modified' && x.address === a.compute && x.symbol === 'compute (patch site)' && (x.destination ?? '').includes('(evil)')), summary(f)).toBe(true);
    // Structure 10 owns the site: no second finding whose restore would put the file's bytes back.
    expect(f.filter((x) => x.code === 0), summary(f)).toEqual([]);
    await t.kill();
  });

  it('restore writes the signed jump back at a patch site an attacker reverted', async () => {
    const { t, a } = await patchedVictim();
    const signed = readSite(t.pid, a.compute);
    pokeMemory(t.pid, a.compute, readFileBytes(fx.victim, 'compute', 5));
    expect(await command(t, 'run')).not.toContain('compute=42');
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    const site = f.find((x) => x.code === 10 && x.kind === 'patch-site-modified');
    expect(site, summary(f)).toBeDefined();
    expect(site!.expected).toEqual(signed);
    const outcome = await restoreFinding(site!, { state: new GuardState(null, true), trustConfigured: true });
    expect(outcome.ok, outcome.detail).toBe(true);
    expect(readSite(t.pid, a.compute)).toEqual(signed);
    expect(await command(t, 'run')).toContain('compute=42');
    expect(await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] })).toEqual([]);
    await t.kill();
  });

  it('after remove, the arena (freed code, or retired code still signed) verifies clean', async () => {
    const { t } = await patchedVictim();
    const id = readRecordFromMappings(t.pid, openProcess(t.pid).enumerateMappings())!.patches[0]!.id;
    const removed = await removeFromProcesses(id, { pids: [t.pid] });
    expect(removed.results[0]?.status, JSON.stringify(removed.results)).toBe('removed');
    expect(await command(t, 'run')).not.toContain('compute=42');
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });

  it('code written into the free space of a patch arena is a finding', async () => {
    const { t } = await patchedVictim();
    const p = openProcess(t.pid);
    const rec = readRecordFromMappings(t.pid, p.enumerateMappings())!;
    const arena = p.enumerateMappings().find((m) => m.protection.execute && rec.arenas.some((a) => m.start >= a.start && m.end <= a.end))!;
    p.close();
    const spot = arena.end - 64n; // past the patch's code: free arena space
    pokeMemory(t.pid, spot, Uint8Array.of(0x48, 0x31, 0xc0, 0xc3)); // xor rax, rax; ret
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    const bad = f.find((x) => x.code === 10 && x.kind === 'patch-modified' && x.address === spot);
    expect(bad, summary(f)).toBeDefined();
    expect(f.some((x) => x.code === 5), summary(f)).toBe(true); // no longer a trusted arena
    await t.kill();
  });

  it('a record whose signature was forged (consistent slot, wrong signature) is a finding', async () => {
    const { t } = await patchedVictim();
    const p = openProcess(t.pid);
    let rec: PatchRecord;
    let map: string;
    try {
      const maps = p.enumerateMappings();
      rec = readRecordFromMappings(t.pid, maps)!;
      map = maps.find((m) => m.path === RECORD_MAPS_PATH)!.mapFilesPath!;
    } finally {
      p.close();
    }
    // An attacker with root rewrites the record consistently (valid slot checksum), e.g. to make
    // a patch of their own look sanctioned; the signature no longer matches the message.
    const sig = rec.patches[0]!.signing!;
    sig.signature = Uint8Array.from(sig.signature, (b, i) => (i === 0 ? b ^ 1 : b));
    const slot = encodeRecordSlot(rec, rec.generation + 1n);
    const fd = openSync(map, 'r+');
    try {
      writeSync(fd, slot, 0, slot.length, 0);
      writeSync(fd, slot, 0, slot.length, RECORD_SLOT_SIZE);
    } finally {
      closeSync(fd);
    }
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] });
    expect(f.some((x) => x.code === 10 && x.kind === 'patch-signature' && x.severity === 'critical' && /does not verify/.test(x.detail)), summary(f)).toBe(true);
    expect(f.some((x) => x.code === 0 && x.kind === 'inline-hook'), summary(f)).toBe(true);
    await t.kill();
  });
});

function patchIdOf(pid: number): string {
  return listPatches(pid).patches[0]!.id;
}

describe('restore never makes the code disagree with the record (#13)', () => {
  it('a --trust file that does not exist is an error for verify and guard, and nothing is restored', async () => {
    const { t, a } = await patchedVictim();
    const before = readSite(t.pid, a.compute);
    const missing = join(tmpdir(), 'no-such-dir-hotpatch', 'typo.pub');
    for (const args of [
      ['verify', '--pid', String(t.pid), '--trust', missing],
      ['guard', '--pid', String(t.pid), '--trust', missing, '--action', 'restore', '--interval', '0.2', '--duration', '2', '--no-ptrace'],
    ]) {
      const r = await runCli(args);
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain(missing);
      expect(r.stderr).not.toMatch(/internal error|\n\s+at /);
    }
    expect(readSite(t.pid, a.compute)).toEqual(before);
    expect(await command(t, 'run')).toContain('compute=42');
    await expect(findingsOf(t.pid, { trustedKeys: [missing] })).rejects.toMatchObject({ code: 'KEY_NOT_FOUND' });
    await t.kill();
  });

  it('guard --action restore with no trusted signer configured leaves a signed patch applied and consistent', async () => {
    const { t, a } = await patchedVictim();
    const before = readSite(t.pid, a.compute);
    const dir = mkdtempSync(join(tmpdir(), 'guard-notrust-'));
    const r = await runCli(['guard', '--pid', String(t.pid), '--action', 'restore', '--interval', '0.3', '--duration', '3', '--no-ptrace', '--state-dir', dir, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/no trusted signer is configured/);
    expect(readSite(t.pid, a.compute)).toEqual(before);
    expect(await command(t, 'run')).toContain('compute=42');
    expect(listPatches(t.pid).disagreements).toEqual([]);
    await t.kill();
  });

  it('restore of a patch by an untrusted signer removes it through the engine (list and code agree)', async () => {
    const { t, a } = await patchedVictim();
    const f = await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [otherPub] });
    const site = f.find((x) => x.kind === 'patch-untrusted');
    expect(site, summary(f)).toBeDefined();
    const outcome = await restoreFinding(site!, { state: new GuardState(null, true), trustConfigured: true });
    expect(outcome.ok, outcome.detail).toBe(true);
    expect(readSite(t.pid, a.compute)).toEqual(readFileBytes(fx.victim, 'compute', 5));
    expect(await command(t, 'run')).not.toContain('compute=42');
    const listed = listPatches(t.pid);
    expect(listed.patches.every((p) => p.state !== 'applied'), JSON.stringify(listed.patches)).toBe(true);
    expect(listed.disagreements).toEqual([]);
    // And it can be applied again.
    const again = await applyPackageFile(pkgPath, { pids: [t.pid], trustFiles: [pubKey] });
    expect(again.results[0]?.status, JSON.stringify(again.results)).toBe('patched');
    await t.kill();
  });

  it('restore never writes file bytes over a recorded site (structure 0/3 findings at a site are logged only)', async () => {
    const { t, a } = await patchedVictim();
    const signed = readSite(t.pid, a.compute);
    const outcome = await restoreFinding(
      {
        pid: t.pid, code: 0, structure: 'module code', kind: 'inline-hook', module: fx.victim, offset: 0n, address: a.compute, symbol: 'compute',
        expected: readFileBytes(fx.victim, 'compute', 5), actual: signed, severity: 'high', detail: 'test',
      },
      { state: new GuardState(null, true), trustConfigured: true },
    );
    expect(outcome.ok).toBe(false);
    expect(outcome.detail).toMatch(/site of patch .* only the engine changes it/);
    expect(readSite(t.pid, a.compute)).toEqual(signed);
    await t.kill();
  });

  it('code restored behind the engine\'s back: apply and remove say so, recover reconciles, apply works again', async () => {
    const { t, a } = await patchedVictim();
    const id = patchIdOf(t.pid);
    // What the old guard did: the file's bytes written over the signed patch.
    pokeMemory(t.pid, a.compute, readFileBytes(fx.victim, 'compute', 5));
    expect(listPatches(t.pid).disagreements.join('; ')).toMatch(/recorded as applied, but compute at 0x[0-9a-f]+ does not hold its jump/);
    const applied = await applyPackageFile(pkgPath, { pids: [t.pid], trustFiles: [pubKey] });
    expect(applied.results[0]?.status).toBe('failed');
    expect(applied.results[0]?.reason).toMatch(/hotpatch recover --pid/);
    const removed = await removeFromProcesses(id, { pids: [t.pid] });
    expect(removed.results[0]?.reason).toMatch(/hotpatch recover --pid/);
    const r = await runCli(['recover', '--all', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { results: Array<{ pid: number; status: string; actions?: Array<{ action: string }> }> };
    const mine = doc.results.find((x) => x.pid === t.pid);
    expect(mine?.status, r.stdout).toBe('removed');
    expect(mine?.actions?.[0]?.action).toBe('reconciled');
    expect(listPatches(t.pid).disagreements).toEqual([]);
    expect((await recoverProcesses({ pids: [t.pid] })).results[0]?.status).toBe('skipped');
    const again = await applyPackageFile(pkgPath, { pids: [t.pid], trustFiles: [pubKey] });
    expect(again.results[0]?.status, JSON.stringify(again.results)).toBe('patched');
    expect(await command(t, 'run')).toContain('compute=42');
    expect(await findingsOf(t.pid, { caches: new VerifierCaches(), trustedKeys: [pubKey] })).toEqual([]);
    await t.kill();
  });
});
