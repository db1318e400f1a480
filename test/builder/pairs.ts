/**
 * Builds old/new pairs of the builder fixtures (test/fixtures/builder/<scenario>/) with gcc.
 * Both builds compile sources with the SAME file names from the same relative paths (so STT_FILE
 * symbols match, as they do when a user rebuilds a fixed checkout): old.c and new.c are copied to
 * prog.c; old/ and new/ folders keep their file names. Outputs are cached by content hash.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = join(tmpdir(), 'hotpatch-builder-pairs');
// Not imported from helpers/native.ts, which needs a running vitest: this module also serves scripts.
const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '../fixtures');

/** Flags of a line of the build-flag matrix. */
export interface PairOptions {
  flags?: string[];
  /** Extra flags for the new build only, after the sources (e.g. -lm, -nostdlib). */
  newFlags?: string[];
  /** Build a shared library (then `main` is the program that loads it). */
  shared?: boolean;
  cxx?: boolean;
}

export interface Pair {
  old: string;
  new: string;
  /** For shared-library scenarios: a program linked against the old library (run with LD_LIBRARY_PATH=dirname(old)). */
  main?: string;
}

/** The recommended flags: hotpatchable entries and kept relocations. */
export const RECOMMENDED = ['-O2', '-fpatchable-function-entry=7,5', '-Wl,--emit-relocs'];

/** Debian's `dpkg-buildflags` (bookworm, hardening=+all) without any hotpatch flag or --emit-relocs. */
export const DEB_HARDENING = ['-g', '-fstack-protector-strong', '-Wformat', '-Werror=format-security', '-fcf-protection', '-Wdate-time', '-D_FORTIFY_SOURCE=2', '-Wl,-z,relro', '-Wl,-z,now'];

function sources(scenario: string, variant: 'old' | 'new'): { from: string; name: string }[] {
  const dir = join(FIXTURES, 'builder', scenario);
  const sub = join(dir, variant);
  if (existsSync(sub) && statSync(sub).isDirectory()) {
    return readdirSync(sub)
      .filter((f) => /\.(c|cc)$/.test(f))
      .sort()
      .map((f) => ({ from: join(sub, f), name: f }));
  }
  for (const ext of ['c', 'cc']) {
    const f = join(dir, `${variant}.${ext}`);
    if (existsSync(f)) return [{ from: f, name: `prog.${ext}` }];
  }
  throw new Error(`fixture ${scenario} has no ${variant} sources`);
}

async function buildOne(scenario: string, variant: 'old' | 'new', o: PairOptions): Promise<string> {
  const srcs = sources(scenario, variant);
  const flags = o.flags ?? RECOMMENDED;
  const libs = variant === 'new' ? (o.newFlags ?? []) : [];
  const h = createHash('sha256').update(JSON.stringify({ scenario, flags, libs, shared: o.shared ?? false, cxx: o.cxx ?? false }));
  for (const s of srcs) h.update(s.name).update(readFileSync(s.from));
  const digest = h.digest('hex').slice(0, 16);
  // The directory name is the same for old and new: only a parent differs, and gcc records the
  // file name as given on the command line (relative), so STT_FILE matches.
  const dir = join(ROOT, digest, 'src');
  const out = join(ROOT, digest, o.shared ? 'libfix.so' : 'prog');
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  for (const s of srcs) copyFileSync(s.from, join(dir, s.name));
  const args = [...flags, ...(o.shared ? ['-shared', '-fPIC'] : []), '-o', `${out}.tmp`, ...srcs.map((s) => s.name), ...libs];
  await run(o.cxx ? 'g++' : 'gcc', args, { cwd: dir });
  renameSync(`${out}.tmp`, out);
  return out;
}

/** Builds the old and new variant of a scenario with the same flags. */
export async function buildPair(scenario: string, options: PairOptions = {}): Promise<Pair> {
  const [o, n] = await Promise.all([buildOne(scenario, 'old', options), buildOne(scenario, 'new', options)]);
  const pair: Pair = { old: o, new: n };
  const mainC = join(FIXTURES, 'builder', scenario, 'main.c');
  if (options.shared && existsSync(mainC)) {
    const dir = join(o, '..');
    const main = join(dir, 'main');
    if (!existsSync(main)) {
      await run('gcc', ['-O2', '-o', `${main}.tmp`, mainC, '-L', dir, '-lfix', `-Wl,-rpath,${dir}`]);
      renameSync(`${main}.tmp`, main);
    }
    pair.main = main;
  }
  return pair;
}
