/**
 * The bundled sample service (samples/service/server.c), compiled on demand with gcc so the README
 * quick start has a real hotpatchable program to scan and patch.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { HotpatchError } from '../errors.js';

const run = promisify(execFile);

/** gcc flags of the sample: hotpatch padding on every function, symbols kept, PIE. */
export const SAMPLE_CFLAGS: readonly string[] = ['-O2', '-g', '-fpatchable-function-entry=7,5', '-pthread'];

/**
 * Path of samples/service/server.c in the installed package: this file is dist/src/scan/sample.js
 * (or src/scan/sample.ts under vitest), three or two levels below the package root.
 */
export function sampleSourcePath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const p = resolve(here, up, 'samples/service/server.c');
    if (existsSync(p)) return p;
  }
  throw new HotpatchError('SAMPLE_NOT_FOUND', 'samples/service/server.c is missing from the hotpatch package; reinstall it');
}

/**
 * Compiles the sample service into `outDir` (created if needed) and returns the binary's path.
 * Needs gcc; throws HotpatchError SAMPLE_BUILD_FAILED with gcc's message otherwise.
 */
export async function buildSample(outDir: string): Promise<string> {
  const src = sampleSourcePath();
  mkdirSync(outDir, { recursive: true });
  const out = join(resolve(outDir), 'hotpatch-sample-server');
  try {
    await run('gcc', [...SAMPLE_CFLAGS, '-o', out, src]);
  } catch (e) {
    const err = e as { code?: string; stderr?: string; message?: string };
    const why = err.code === 'ENOENT' ? 'gcc is not installed (apt-get install gcc)' : (err.stderr || err.message || String(e)).trim();
    throw new HotpatchError('SAMPLE_BUILD_FAILED', `cannot build the sample service: ${why}`, { cause: e });
  }
  return out;
}
