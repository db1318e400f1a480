/**
 * Structure 10 for patches switched without a freeze (#10): the gate block and its flag are part
 * of what a signed patch sanctions. A live-applied signed patch verifies clean; a flag turned off
 * (or on, after removal) behind the engine's back, and a redirected gate, are findings; a patch
 * removed live while a thread is still inside keeps its padding's jump, and that verifies clean.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { VerifierCaches } from '../../src/guard/index.js';
import { readRecordFromMappings, recoverProcess, removePatch, type RecordPatch } from '../../src/patch/engine/index.js';
import { runCli } from '../helpers/cli.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { applyPackageFile } from '../../src/patch/updater/index.js';
import { openProcess } from '../../src/process/index.js';
import { compile, killTargetsAfterAll, startTarget, type Target } from '../helpers/native.js';
import { handPlan, PADDED_FIX, query, SLEEP_2S_42, untilInside } from '../engine/helpers.js';
import { findingsOf, pokeMemory, summary } from './helpers.js';

killTargetsAfterAll();

let exe: string;
let pub: string;
let fixPkg: string;
let slowPkg: string;

beforeAll(async () => {
  exe = await compile({ file: 'engine/target.c', flags: ['-O2', '-g0'], name: 'engine-target' });
  const dir = mkdtempSync(join(tmpdir(), 'guard-live-'));
  const key = writeKeyFiles(join(dir, 'ops.key'), { comment: 'ops' });
  pub = key.publicKeyFile;
  const sign = (code: number[], file: string): string => {
    const path = join(dir, file);
    writeFileSync(path, encodePackage(signPackage(createPackage(handPlan(exe, [{ name: 'padded_value', kind: 'padded', code }])), readFileSync(join(dir, 'ops.key'), 'utf8'))));
    return path;
  };
  fixPkg = sign(PADDED_FIX, 'fix.hpk');
  slowPkg = sign(SLEEP_2S_42, 'slow.hpk');
});

function recordedPatch(pid: number): RecordPatch | undefined {
  const p = openProcess(pid);
  try {
    return readRecordFromMappings(pid, p.enumerateMappings())?.patches[0];
  } finally {
    p.close();
  }
}

async function liveApplied(pkg: string): Promise<{ t: Target; patch: RecordPatch }> {
  const t = await startTarget(exe, ['4']);
  const r = await applyPackageFile(pkg, { pids: [t.pid], trustFiles: [pub] });
  expect(r.results[0], JSON.stringify(r.results)).toMatchObject({ status: 'patched', protocol: 'live' });
  const patch = recordedPatch(t.pid)!;
  expect(patch.flag).toBeDefined();
  return { t, patch };
}

const verify = (pid: number) => findingsOf(pid, { caches: new VerifierCaches(), trustedKeys: [pub] });

describe('verify: patches switched live (10)', () => {
  it('a signed patch applied live verifies clean in every structure', async () => {
    const { t } = await liveApplied(fixPkg);
    expect((await query(t)).padded).toBe(12);
    const f = await verify(t.pid);
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });

  it('a flag cleared behind the engine\'s back is a finding (the process silently runs the old code)', async () => {
    const { t, patch } = await liveApplied(fixPkg);
    pokeMemory(t.pid, patch.flag!, Uint8Array.of(0));
    expect((await query(t)).padded).toBe(11);
    const f = await verify(t.pid);
    const bad = f.find((x) => x.code === 10 && x.kind === 'patch-modified');
    expect(bad, summary(f)).toBeDefined();
    expect(bad!.detail).toMatch(/gate block .* its flag is 0, the patch is applied/);
    await t.kill();
  });

  it('a gate redirected elsewhere is a finding', async () => {
    const { t, patch } = await liveApplied(fixPkg);
    const gate = patch.sites[0]!.gate!;
    // The gate's `jmp old_body` (last 4 bytes = rel32) pointed one byte further.
    const p = openProcess(t.pid);
    const rel = p.readMemory(gate + 14n, 4);
    p.close();
    const dv = new DataView(rel.buffer, rel.byteOffset, 4);
    dv.setInt32(0, dv.getInt32(0, true) + 1, true);
    pokeMemory(t.pid, gate + 14n, rel);
    const f = await verify(t.pid);
    expect(f.some((x) => x.code === 10 && x.kind === 'patch-modified' && /gates are not the ones/.test(x.detail)), summary(f)).toBe(true);
    await t.kill();
  });

  it.each(['live', 'freeze'] as const)('removed (%s) while a thread sleeps inside: the retired patch verifies clean', async (protocol) => {
    const { t, patch } = await liveApplied(slowPkg);
    await untilInside(t.pid, patch.sites[0]!.newCode);
    const r = await removePatch(t.pid, recordedPatch(t.pid)!.id, { freeze: protocol === 'freeze' });
    expect(r).toMatchObject({ protocol, codeFreed: false });
    const retired = recordedPatch(t.pid)!;
    expect(retired.state).toBe('removed');
    const site = retired.sites[0]!;
    const p = openProcess(t.pid);
    const padding = p.readMemory(site.address, 5);
    p.close();
    // No thread is in the padding itself: it has its original bytes back at once, unless a thread
    // was running when the live remove looked (it stops none: then the padding keeps the retired
    // jump until a later check). The code stays until the sleeping thread has left; either way the
    // retired patch is sanctioned.
    if (protocol === 'freeze') expect(padding).toEqual(site.original.subarray(0, 5));
    else expect([site.original.subarray(0, 5), site.written.subarray(0, 5)]).toContainEqual(padding);
    const f = await verify(t.pid);
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });

  it('an apply killed after its flag was set is undone by recover: flag cleared, the retired patch verifies clean', async () => {
    const t = await startTarget(exe, ['4']);
    const killed = await runCli(['apply', slowPkg, '--pid', String(t.pid), '--trust', pub], { env: { HOTPATCH_FAULT: 'apply:thawed' } });
    expect(killed.signal).toBe('SIGKILL');
    const pending = recordedPatch(t.pid)!;
    expect(pending.state).toBe('pending');
    await untilInside(t.pid, pending.sites[0]!.newCode);
    const rec = await recoverProcess(t.pid);
    expect(rec.actions).toEqual([expect.objectContaining({ action: 'undone' })]);
    const retired = recordedPatch(t.pid)!;
    expect(retired.state).toBe('removed');
    const p = openProcess(t.pid);
    const flag = p.readMemory(retired.flag!, 1)[0];
    p.close();
    expect(flag).toBe(0);
    const f = await verify(t.pid);
    expect(f, summary(f)).toEqual([]);
    await t.kill();
  });
});
