/**
 * The vDSO exports `getrandom` (Linux ≥ 6.11) but is in no symbol lookup scope: an unversioned
 * weak reference (as Rust libraries have) binds to libc's getrandom, and that is not a GOT hook.
 */
import { execFile } from 'node:child_process';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { VerifierCaches, verifyProcesses } from '../../src/guard/index.js';
import { compile, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { summary } from './helpers.js';

const run = promisify(execFile);
killTargetsAfterAll();

describe('import slots and the vDSO', () => {
  it('an unversioned weak getrandom bound to libc verifies clean', async () => {
    const lib = await compile({ file: 'guard/vdso-scope/weak.c', shared: true, flags: ['-O2', '-nostdlib'], name: 'libweak.so' });
    const { stdout } = await run('readelf', ['--dyn-syms', '-W', lib]);
    expect(stdout).toMatch(/WEAK +DEFAULT +UND getrandom$/m); // unversioned
    const exe = await compile({ file: 'guard/vdso-scope/main.c', extraFiles: [lib], flags: ['-O2', `-Wl,-rpath,${dirname(lib)}`], name: 'vdso-scope' });
    const t = await startTarget(exe, [], { readyText: /ready 8/ });
    const results = await verifyProcesses([t.pid], { caches: new VerifierCaches(), structures: [3] });
    expect(results[0]!.checked).toBe(true);
    expect(results[0]!.findings, summary(results[0]!.findings)).toEqual([]);
    await t.kill();
  });
});
