/**
 * Helpers for the agent/store tests: a *salted* build of the updater fixture library (a random
 * string in the binary gives it a build-id no other test on this machine uses, so an agent under
 * test never touches another test's processes), signed packages with metadata, the agent as a
 * child process with its JSON log.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildPatch } from '../../src/patch/builder/index.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { FIXTURES, REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
export const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
export const LIB_FLAGS = ['-O2', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs', '-shared', '-fPIC'];

export interface AgentFixture {
  dir: string;
  app: string;
  prog: string;
  pkg: string;
  untrustedPkg: string;
  pub: string;
  patchId: string;
  /** A second fix of the same function (returns x + 3), built from the running library too: stacks on `pkg`. */
  pkg2: string;
  patchId2: string;
  store: string;
}

/** Compiles the salted library (running and fixed builds) and the program; signs the package. */
export async function makeAgentFixture(): Promise<AgentFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-agent-'));
  const app = join(dir, 'app');
  mkdirSync(app);
  mkdirSync(join(dir, 'build'));
  const salt = randomBytes(8).toString('hex');
  const src = join(dir, 'libfix.c');
  writeFileSync(src, `${readFileSync(join(FIXTURES, 'updater/libfix.c'), 'utf8')}\n__attribute__((used)) static const char agent_test_salt[] = "${salt}";\n`);
  const src2 = join(dir, 'libfix2.c');
  writeFileSync(src2, readFileSync(src, 'utf8').replace('return x + 2;', 'return x + 3;'));
  const lib = join(app, 'libfix.so');
  const fixed = join(dir, 'build', 'libfix.so');
  const fixed2Dir = join(dir, 'build2');
  mkdirSync(fixed2Dir);
  const fixed2 = join(fixed2Dir, 'libfix.so');
  await Promise.all([
    run('gcc', [...LIB_FLAGS, '-o', lib, src]), run('gcc', [...LIB_FLAGS, '-DLIBFIX_FIXED', '-o', fixed, src]),
    run('gcc', [...LIB_FLAGS, '-DLIBFIX_FIXED', '-o', fixed2, src2]),
  ]);
  const prog = join(app, 'alpha');
  await run('gcc', ['-O2', '-o', prog, join(FIXTURES, 'updater/prog.c'), `-L${app}`, '-lfix', '-lpthread', `-Wl,-rpath,${app}`]);
  const { plan } = buildPatch(new Uint8Array(readFileSync(lib)), new Uint8Array(readFileSync(fixed)), { oldName: 'libfix.so', newName: 'libfix.so' });
  const p = createPackage(plan, { description: 'lib_value returns x + 2', cves: ['CVE-2024-0001'], severity: 'high' });
  const plan2 = buildPatch(new Uint8Array(readFileSync(lib)), new Uint8Array(readFileSync(fixed2)), { oldName: 'libfix.so', newName: 'libfix.so' }).plan;
  const p2 = createPackage(plan2, { description: 'lib_value returns x + 3', cves: ['CVE-2024-0002'], severity: 'medium' });
  const { publicKeyFile } = writeKeyFiles(join(dir, 'release.key'), { comment: 'Release team' });
  writeKeyFiles(join(dir, 'other.key'), { comment: 'Someone else' });
  const pkg = join(dir, 'fix.hpk');
  const untrustedPkg = join(dir, 'untrusted.hpk');
  writeFileSync(pkg, encodePackage(signPackage(p, readFileSync(join(dir, 'release.key'), 'utf8'))));
  writeFileSync(untrustedPkg, encodePackage(signPackage(p, readFileSync(join(dir, 'other.key'), 'utf8'))));
  const pkg2 = join(dir, 'fix2.hpk');
  writeFileSync(pkg2, encodePackage(signPackage(p2, readFileSync(join(dir, 'release.key'), 'utf8'))));
  return { dir, app, prog, pkg, untrustedPkg, pub: publicKeyFile, patchId: p.id, pkg2, patchId2: p2.id, store: join(dir, 'store') };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI (HOTPATCH_* variables of the caller removed). */
export async function cli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HOTPATCH_')));
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { env: { ...base, ...env }, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout: string; stderr: string };
    return { code: typeof err.code === 'number' ? err.code : null, stdout: err.stdout, stderr: err.stderr };
  }
}

/** A running `hotpatch agent` with its parsed JSON log. */
export interface AgentProcess {
  child: ChildProcess;
  log: Array<Record<string, unknown>>;
  stderr(): string;
  /** Resolves with the first log entry matching `pred` (searching the whole log so far). */
  waitLog(pred: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const agents = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of agents) c.kill('SIGKILL');
});

/** Kills every agent still running (for afterAll). */
export async function killAgents(): Promise<void> {
  await Promise.all([...agents].map((c) => new Promise<void>((res) => {
    if (c.exitCode !== null || c.signalCode !== null) return res();
    c.once('exit', () => res());
    c.kill('SIGKILL');
  })));
}

/** Starts `hotpatch agent ARGS` with `env` added, under `wrapper` (e.g. `ip netns exec NS`) if given. */
export function startAgent(args: string[], env: Record<string, string> = {}, wrapper: string[] = []): AgentProcess {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HOTPATCH_')));
  const argv = [...wrapper, process.execPath, CLI, 'agent', ...args];
  const child = spawn(argv[0]!, argv.slice(1), { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  agents.add(child);
  const exited = new Promise<void>((res) => child.once('exit', () => {
    agents.delete(child);
    res();
  }));
  const log: Array<Record<string, unknown>> = [];
  let buf = '';
  let err = '';
  const listeners: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      log.push(JSON.parse(line) as Record<string, unknown>); // one JSON document per line, or the test fails
    }
    for (const l of listeners.splice(0)) l();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  return {
    child, log, stderr: () => err,
    waitLog(pred, timeoutMs = 20_000) {
      return new Promise((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`agent log never matched; log: ${JSON.stringify(log)}; stderr: ${err}`)), timeoutMs);
        const check = () => {
          const e = log.find(pred);
          if (e) {
            clearTimeout(timer);
            res(e);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            rej(new Error(`agent exited (${child.exitCode ?? child.signalCode}); log: ${JSON.stringify(log)}; stderr: ${err}`));
          } else listeners.push(check);
        };
        check();
      });
    },
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        await exited;
      }
    },
  };
}
