/**
 * An executable as the target: the demo HTTP server (samples/demo/server.c) and its fixed build
 * made into a package by the builder; `apply --all` patches every running server, the leak is gone
 * over HTTP, a server of the fixed build is skipped, `remove --all` brings the old code back.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildPatch } from '../../src/patch/builder/index.js';
import { createPackage, encodePackage, makeColdPayload } from '../../src/patch/package/index.js';
import { parseElf } from '../../src/elf/index.js';
import { killTargetsAfterAll, REPO_ROOT, startTarget, type Target } from '../helpers/native.js';
import { cli, textHash } from './helpers.js';

killTargetsAfterAll();
const run = promisify(execFile);
const FLAGS = ['-O2', '-pthread', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];
let dir: string;
let pkgPath: string;
let patchId: string;
let servers: Array<{ t: Target; port: number }>;
let fixedServer: { t: Target; port: number };

function echoLength(port: number, path: string): Promise<number> {
  return new Promise((res, rej) => {
    get({ host: '127.0.0.1', port, path, agent: false }, (r) => {
      let n = 0;
      r.on('data', (c: Buffer) => (n += c.length));
      r.on('end', () => res(n));
    }).on('error', rej);
  });
}

async function start(exe: string): Promise<{ t: Target; port: number }> {
  const t = await startTarget(exe, ['0', '4'], { readyText: /ready \d+/ });
  return { t, port: Number(/ready (\d+)/.exec(t.output())![1]) };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-updater-exe-'));
  const src = join(REPO_ROOT, 'samples/demo/server.c');
  const oldExe = join(dir, 'server');
  const fixedExe = join(dir, 'server-fixed');
  await Promise.all([run('gcc', [...FLAGS, '-o', oldExe, src]), run('gcc', [...FLAGS, '-DHOTPATCH_DEMO_FIXED', '-o', fixedExe, src])]);
  const fixed = new Uint8Array(readFileSync(fixedExe));
  const pkg = createPackage(buildPatch(new Uint8Array(readFileSync(oldExe)), fixed, { oldName: 'server' }).plan, {
    cold: makeColdPayload(fixed, { buildId: parseElf(fixed).buildId!, mode: 0o755 }),
  });
  patchId = pkg.id;
  pkgPath = join(dir, 'echo.hpk');
  writeFileSync(pkgPath, encodePackage(pkg));
  servers = await Promise.all([start(oldExe), start(oldExe)]);
  // The fixed build under the target's name (e.g. started after a cold patch elsewhere).
  const renamed = join(dir, 'fixed');
  await run('mkdir', [renamed]);
  await run('cp', [fixedExe, join(renamed, 'server')]);
  fixedServer = await start(join(renamed, 'server'));
}, 120_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('an executable target', () => {
  it('apply --all patches every server (leak fixed over HTTP), skips the fixed build; remove --all restores', async () => {
    const before = servers.map((s) => textHash(s.t.pid));
    for (const s of servers) expect(await echoLength(s.port, '/echo?msg=hi&len=40')).toBe(40);
    const r = await cli(['apply', pkgPath, '--all', '--allow-unsigned', '--concurrency', '2', '--json']);
    expect(r.code).toBe(0);
    const results = JSON.parse(r.stdout).results as Array<{ pid: number; status: string; code?: string; reason?: string }>;
    for (const s of servers) expect(results.find((x) => x.pid === s.t.pid)).toMatchObject({ status: 'patched' });
    expect(results.find((x) => x.pid === fixedServer.t.pid)).toMatchObject({ status: 'skipped', code: 'RUNS_FIXED_BUILD', reason: expect.stringMatching(/runs the fixed build/) });
    for (const s of servers) {
      expect(await echoLength(s.port, '/echo?msg=hi&len=40')).toBe(2);
      expect(await echoLength(s.port, '/echo?msg=hello&len=5')).toBe(5);
    }
    const rm = await cli(['remove', patchId, '--all', '--json']);
    expect(rm.code).toBe(0);
    for (const s of servers) expect(JSON.parse(rm.stdout).results.find((x: { pid: number }) => x.pid === s.t.pid).status).toBe('removed');
    servers.forEach((s, i) => expect(textHash(s.t.pid)).toBe(before[i]));
    for (const s of servers) expect(await echoLength(s.port, '/echo?msg=hi&len=40')).toBe(40);
  });
});
