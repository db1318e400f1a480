/**
 * Helpers for the updater's integration tests: build the fixture library in its variants and the
 * programs that load it, build and sign real packages with the builder, run the CLI, ask targets
 * what their code returns, and snapshot executable memory for byte-identity checks.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseElf } from '../../src/elf/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { listPatches, recoverProcess } from '../../src/patch/engine/index.js';
import { createPackage, encodePackage, makeColdPayload } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { openProcess } from '../../src/process/index.js';
import { CLI, cliEnv, runCli, type CliRun } from '../helpers/cli.js';
import { FIXTURES, type Target } from '../helpers/native.js';

const run = promisify(execFile);
const LIB_FLAGS = ['-O2', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs', '-shared', '-fPIC'];

/** Everything a scenario needs on disk. */
export interface Fixture {
  dir: string;
  /** Directory with the running build libfix.so and the programs alpha and beta. */
  app: string;
  lib: string;
  fixedLib: string;
  otherLib: string;
  alpha: string;
  beta: string;
  /** Signed package (with the fixed file for --cold), unsigned package, trusted public key. */
  signedPkg: string;
  unsignedPkg: string;
  pub: string;
  keyId: string;
  patchId: string;
  oldBuildId: string;
  fixedBuildId: string;
}

/** Compiles the fixture library (old, fixed, other), two programs, and makes the packages. */
export async function makeFixture(): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-updater-'));
  const app = join(dir, 'app');
  const build = join(dir, 'build');
  mkdirSync(app);
  mkdirSync(build);
  const src = join(FIXTURES, 'updater/libfix.c');
  const lib = join(app, 'libfix.so');
  const fixedLib = join(build, 'libfix.so');
  mkdirSync(join(dir, 'other'));
  const otherLib = join(dir, 'other', 'libfix.so');
  await Promise.all([
    run('gcc', [...LIB_FLAGS, '-o', lib, src]),
    run('gcc', [...LIB_FLAGS, '-DLIBFIX_FIXED', '-o', fixedLib, src]),
    run('gcc', [...LIB_FLAGS, '-DLIBFIX_OTHER', '-o', otherLib, src]),
  ]);
  const prog = join(FIXTURES, 'updater/prog.c');
  const alpha = join(app, 'alpha');
  const beta = join(app, 'beta');
  await Promise.all([
    run('gcc', ['-O2', '-o', alpha, prog, `-L${app}`, '-lfix', '-lpthread']),
    run('gcc', ['-O2', '-DPROG_NAME="beta"', '-o', beta, prog, `-L${app}`, '-lfix', '-lpthread']),
  ]);
  const oldBytes = new Uint8Array(readFileSync(lib));
  const fixedBytes = new Uint8Array(readFileSync(fixedLib));
  const fixedBuildId = parseElf(fixedBytes).buildId!;
  const { plan } = buildPatch(oldBytes, fixedBytes, { oldName: 'libfix.so', newName: 'libfix.so' });
  const pkg = createPackage(plan, { description: 'lib_value returns x + 2', cold: makeColdPayload(fixedBytes, { buildId: fixedBuildId, mode: 0o755 }) });
  const key = join(dir, 'release.key');
  const { publicKeyFile, keyId } = writeKeyFiles(key, { comment: 'Release team' });
  const unsignedPkg = join(dir, 'unsigned.hpk');
  const signedPkg = join(dir, 'signed.hpk');
  writeFileSync(unsignedPkg, encodePackage(pkg));
  writeFileSync(signedPkg, encodePackage(signPackage(pkg, readFileSync(key, 'utf8'))));
  return {
    dir, app, lib, fixedLib, otherLib, alpha, beta, signedPkg, unsignedPkg, pub: publicKeyFile, keyId, patchId: pkg.id,
    oldBuildId: parseElf(oldBytes).buildId!, fixedBuildId,
  };
}

/** A copy of the running library in its own directory (to load it from another path). */
export function copyLib(f: Fixture, name: string): string {
  const d = join(f.dir, name);
  mkdirSync(d, { recursive: true });
  copyFileSync(f.lib, join(d, 'libfix.so'));
  return d;
}

export { CLI, type CliRun } from '../helpers/cli.js';

/** Runs the built CLI; HOTPATCH_TRUSTED_KEYS and HOTPATCH_FAULT* come only from `env`. */
export function cli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runCli(args, { env });
}

/** Starts the CLI in the background: wait for a stderr line, then for its end. */
export function spawnCli(args: string[]): { stderrMatches(re: RegExp, timeoutMs?: number): Promise<void>; done: Promise<CliRun> } {
  const child = spawn(process.execPath, [CLI, ...args], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const listeners: Array<() => void> = [];
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    for (const l of listeners.splice(0)) l();
  });
  const done = new Promise<CliRun>((res) => child.once('close', (code, signal) => res({ code, signal, stdout, stderr })));
  return {
    done,
    stderrMatches(re, timeoutMs = 60_000) {
      return new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`CLI stderr never matched ${re}: ${stderr}`)), timeoutMs);
        const check = () => {
          if (re.test(stderr)) {
            clearTimeout(timer);
            res();
          } else if (child.exitCode !== null) {
            clearTimeout(timer);
            rej(new Error(`CLI exited (${child.exitCode}) before stderr matched ${re}: ${stderr}`));
          } else listeners.push(check);
        };
        check();
      });
    },
  };
}

/** lib_value(10) as the target computes it now (11: running build, 12: fixed). */
export async function value(t: Target): Promise<number> {
  const before = t.output().length;
  t.child.stdin!.write('v\n');
  const re = /value=(-?\d+) calls=\d+ prog=\w+\n/;
  await t.waitFor({ test: (s: string) => re.test(s.slice(before)) } as unknown as RegExp, 5000);
  return Number(re.exec(t.output().slice(before))![1]);
}

/** SHA-256 over the bytes of every file-backed executable mapping: equal = byte-identical code. */
/**
 * textHash once what a live remove left retired (its threads were running, so it was not checked)
 * is freed: recover checks every thread in a freeze and frees it.
 */
export async function settledTextHash(pid: number): Promise<string> {
  for (let i = 0; i < 100 && listPatches(pid).patches.some((p) => p.state === 'retired'); i++) await recoverProcess(pid);
  return textHash(pid);
}

export function textHash(pid: number): string {
  const p = openProcess(pid);
  try {
    const h = createHash('sha256');
    for (const m of p.enumerateMappings()) {
      if (m.protection.execute && m.isFile) h.update(`${m.path}\0`).update(p.readMemory(m.start, Number(m.end - m.start)));
    }
    return h.digest('hex');
  } finally {
    p.close();
  }
}
