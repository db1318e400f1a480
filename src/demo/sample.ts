/**
 * The demo's sample service (samples/demo/server.c): compiled twice with gcc, as a user would build
 * the running program and its fix — same compiler, same flags, the fix switched on by a define.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { HotpatchError } from '../errors.js';

const run = promisify(execFile);

/** The flags a hotpatch-ready build uses (see the README): padded entries and kept relocations. */
export const DEMO_CFLAGS: readonly string[] = [
  '-O2',
  '-g',
  '-pthread',
  '-fpatchable-function-entry=7,5',
  '-ffunction-sections',
  '-Wl,--emit-relocs',
];

/** samples/demo/server.c in the installed package (this file is dist/src/demo or src/demo). */
export function demoSourcePath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const p = resolve(here, up, 'samples/demo/server.c');
    if (existsSync(p)) return p;
  }
  throw new HotpatchError('SAMPLE_NOT_FOUND', 'samples/demo/server.c is missing from the hotpatch package; reinstall it');
}

export interface DemoBuilds {
  /** The running build (with the bug). */
  old: string;
  /** The fixed build. */
  fixed: string;
  /** The gcc command lines used (words), for display. */
  commands: string[][];
}

/** Compiles the buggy and the fixed service into `outDir`. */
export async function buildDemoService(outDirIn: string): Promise<DemoBuilds> {
  const src = demoSourcePath();
  const outDir = resolve(outDirIn);
  mkdirSync(outDir, { recursive: true });
  const old = join(outDir, 'echo-service');
  const fixed = join(outDir, 'echo-service.fixed');
  const jobs: Array<[string, string[]]> = [
    [old, [...DEMO_CFLAGS, '-o', old, src]],
    [fixed, [...DEMO_CFLAGS, '-DHOTPATCH_DEMO_FIXED', '-o', fixed, src]],
  ];
  try {
    await Promise.all(jobs.map(([, args]) => run('gcc', args)));
  } catch (e) {
    const err = e as { code?: string; stderr?: string; message?: string };
    const why = err.code === 'ENOENT' ? 'gcc is not installed (apt-get install gcc)' : (err.stderr || err.message || String(e)).trim();
    throw new HotpatchError('SAMPLE_BUILD_FAILED', `cannot build the demo service: ${why}`, { cause: e });
  }
  const shown = (args: string[]) => args.map((a) => (a === src ? 'samples/demo/server.c' : a.startsWith(outDir) ? basename(a) : a));
  return { old, fixed, commands: jobs.map(([, args]) => ['gcc', ...shown(args)]) };
}
