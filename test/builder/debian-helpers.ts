/**
 * Shared by the tests that build real libraries from Debian source packages (debian*.test.ts; the
 * sources come from test/helpers/debian-source.ts): Debian's build flags, cached builds, installing
 * a build stripped under its real name with the soname link, and its debug file under .build-id.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll } from 'vitest';
import { debugFilePath, parseElf } from '../../src/elf/index.js';

const run = promisify(execFile);

/** The hotpatch-ready flags added on top of the distribution's. */
export const READY = ['-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];

export async function sh(cmd: string, args: string[], cwd?: string, env?: NodeJS.ProcessEnv): Promise<string> {
  const { stdout } = await run(cmd, args, { cwd, env: env ?? process.env, maxBuffer: 64 << 20 });
  return stdout;
}

/**
 * `dpkg-buildflags` of the source tree: CFLAGS and CPPFLAGS (without -ffile-prefix-map, which
 * names the tree: each build maps its own directory to "."), and LDFLAGS.
 */
export async function debianFlags(src: string, env: NodeJS.ProcessEnv = process.env): Promise<{ cflags: string[]; ldflags: string[] }> {
  const get = async (what: string) => (await sh('dpkg-buildflags', ['--get', what], src, env)).trim().split(/\s+/).filter((x) => x !== '');
  const cflags = [...(await get('CFLAGS')), ...(await get('CPPFLAGS'))].filter((x) => !x.startsWith('-ffile-prefix-map'));
  return { cflags, ldflags: await get('LDFLAGS') };
}

/**
 * Builds `file` once per `key` (cached as ROOT/LABEL-HASH/FILE): `build` compiles in its own empty
 * work directory, given the -ffile-prefix-map flag that records that directory as "." (as
 * dpkg-buildflags does), so two variants build at once and still name their sources alike.
 * `millis` is 0 when the build came from the cache.
 */
export async function buildOnce(root: string, label: string, key: unknown, file: string, build: (work: string, prefixMap: string) => Promise<void>): Promise<{ lib: string; millis: number }> {
  const dir = join(root, `${label}-${createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 12)}`);
  const lib = join(dir, file);
  if (existsSync(lib)) return { lib, millis: 0 };
  const t0 = Date.now();
  const work = join(root, `work-${label}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  await build(work, `-ffile-prefix-map=${work}=.`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  renameSync(join(work, file), lib);
  return { lib, millis: Date.now() - t0 };
}

/** A set of build flags of a library: Debian's own, or the hotpatch-ready ones on top. */
export interface Flavour {
  label: string;
  ready: boolean;
}
export type Variant = 'old' | 'new';

/**
 * The builds of a library (old and new for each flavour), made in `beforeAll` two at a time and
 * logged with their times; the returned function gives the file of one (built once).
 */
export function libraryBuilds(name: string, flavours: Flavour[], build: (v: Variant, f: Flavour) => Promise<{ lib: string; millis: number }>): (v: Variant, f: Flavour) => Promise<string> {
  const libs = new Map<string, Promise<string>>();
  const lib = (v: Variant, f: Flavour): Promise<string> => {
    const k = `${v}-${f.ready}`;
    let p = libs.get(k);
    if (!p) {
      p = build(v, f).then((b) => {
        if (b.millis > 0) console.log(`built ${v} ${name} (${f.label}) in ${(b.millis / 1000).toFixed(1)} s`);
        return b.lib;
      });
      libs.set(k, p);
    }
    return p;
  };
  beforeAll(async () => {
    const t0 = Date.now();
    await twoAtATime(flavours.flatMap((f) => (['old', 'new'] as const).map((v) => () => lib(v, f))));
    console.log(`the ${flavours.length * 2} builds of ${name} (two at a time) took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, 900_000);
  return lib;
}

/** Runs `jobs` at most two at a time (the machine has 2 cores). */
export async function twoAtATime<T>(jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array<T>(jobs.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < jobs.length; i = next++) out[i] = await jobs[i]!();
  };
  await Promise.all([lane(), lane()]);
  return out;
}

/**
 * Installs `lib` stripped under its real name `name` with the soname link, like the package does
 * (dh_strip: --strip-unneeded; a build with --emit-relocs keeps the symbols its relocations name
 * that way, so it is stripped with --strip-all). Returns the installed file.
 */
export async function installStripped(lib: string, into: string, o: { ready: boolean; name: string; soname: string }): Promise<string> {
  mkdirSync(into, { recursive: true });
  const real = join(into, o.name);
  await sh('strip', [o.ready ? '--strip-all' : '--strip-unneeded', '--remove-section=.comment', '-o', real, lib]);
  symlinkSync(o.name, join(into, o.soname));
  return real;
}

/** The distribution's debug package for `stripped`: `unstripped`'s debug info under dbgDir/.build-id/. */
export async function installDebugFile(stripped: string, unstripped: string, dbgDir: string): Promise<string> {
  const id = parseElf(new Uint8Array(readFileSync(stripped))).buildId!;
  const file = debugFilePath(dbgDir, id);
  mkdirSync(join(file, '..'), { recursive: true });
  await sh('objcopy', ['--only-keep-debug', unstripped, file]);
  return file;
}

