/**
 * Test helpers for real native targets: compile small C programs with gcc during the test run,
 * start them, wait until they say they are ready, and always kill them afterwards.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll } from 'vitest';

const run = promisify(execFile);

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const FIXTURES = join(REPO_ROOT, 'test/fixtures');
const BUILD_ROOT = join(tmpdir(), 'hotpatch-test-build');

export interface CompileOptions {
  /** C source text, or a path to a .c file (relative paths are under test/fixtures). */
  source?: string;
  file?: string;
  /** More source files (paths), compiled and linked together with the first. */
  extraFiles?: string[];
  flags?: string[];
  /** Build a shared library instead of an executable. */
  shared?: boolean;
  /** Output name (without directory); default derived from the hash. */
  name?: string;
  /** Use g++ instead of gcc. */
  cxx?: boolean;
}

/** Compiles with gcc (cached by content hash) and returns the absolute path of the output. */
export async function compile(options: CompileOptions): Promise<string> {
  const flags = options.flags ?? ['-O2'];
  const files: string[] = [];
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ flags, shared: options.shared ?? false, cxx: options.cxx ?? false }));
  mkdirSync(BUILD_ROOT, { recursive: true });
  if (options.source !== undefined) {
    hash.update(options.source);
    const srcHash = createHash('sha256').update(options.source).digest('hex').slice(0, 16);
    const src = join(BUILD_ROOT, `${srcHash}.${options.cxx ? 'cc' : 'c'}`);
    if (!existsSync(src)) {
      const tmpSrc = `${src}.tmp-${process.pid}`;
      writeFileSync(tmpSrc, options.source);
      renameSync(tmpSrc, src);
    }
    files.push(src);
  }
  for (const f of [options.file, ...(options.extraFiles ?? [])]) {
    if (f === undefined) continue;
    const abs = resolve(FIXTURES, f);
    hash.update(abs).update(readFileSync(abs));
    files.push(abs);
  }
  const digest = hash.digest('hex').slice(0, 16);
  const outDir = join(BUILD_ROOT, digest);
  mkdirSync(outDir, { recursive: true });
  const out = join(outDir, options.name ?? (options.shared ? 'lib.so' : 'prog'));
  if (existsSync(out)) return out;
  // A private temporary name per compile, renamed into place: two test files (separate processes)
  // building the same program at once both succeed and never see a half-written file.
  const tmp = `${out}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const args = [...flags, ...(options.shared ? ['-shared', '-fPIC'] : []), '-o', tmp, ...files];
  if (!options.shared && !flags.some((f) => f.startsWith('-lpthread'))) args.push('-lpthread');
  await run(options.cxx ? 'g++' : 'gcc', args);
  renameSync(tmp, out);
  return out;
}

export interface Target {
  pid: number;
  child: ChildProcess;
  /** Everything the target printed on stdout so far. */
  output(): string;
  /** Resolves when the target's stdout contains `text` (or rejects after `timeoutMs`). */
  waitFor(text: string | RegExp, timeoutMs?: number): Promise<void>;
  kill(): Promise<void>;
}

/**
 * Sends one request line to a target (on its stdin) and returns its answer: the first match of
 * `answer` in the output printed after the line. Rejects when the target exits or after `timeoutMs`.
 */
export async function ask(t: Target, line: string, answer: RegExp, timeoutMs = 20_000): Promise<string> {
  const before = t.output().length;
  t.child.stdin!.write(`${line}\n`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = t.output().slice(before);
    const m = answer.exec(got);
    if (m) return m[0];
    const exited = t.child.exitCode !== null || t.child.signalCode !== null;
    if (exited || Date.now() > deadline) {
      throw new Error(`target ${t.pid} ${exited ? 'exited' : 'answered'} ${JSON.stringify(got)} to ${JSON.stringify(line)}, expected ${answer}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/**
 * Starts a target program and waits until it prints `ready` (override with `readyText`).
 * Every started target is killed when the test file ends, pass or fail.
 */
export async function startTarget(
  path: string,
  args: string[] = [],
  options: { readyText?: string | RegExp | null; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<Target> {
  const child = spawn(path, args, {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: options.env ?? process.env,
    cwd: options.cwd,
  });
  live.add(child);
  let out = '';
  const waiters: Array<() => void> = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  child.once('exit', () => {
    live.delete(child);
    for (const w of waiters.splice(0)) w();
  });
  const target: Target = {
    pid: child.pid!,
    child,
    output: () => out,
    waitFor(text, timeoutMs = 10_000) {
      const matches = () => (typeof text === 'string' ? out.includes(text) : text.test(out));
      return new Promise<void>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`target ${child.pid} did not print ${String(text)}; got: ${out}`)), timeoutMs);
        const check = () => {
          if (matches()) {
            clearTimeout(timer);
            res();
          } else if (child.exitCode !== null || child.signalCode !== null) {
            clearTimeout(timer);
            rej(new Error(`target ${child.pid} exited (${child.exitCode ?? child.signalCode}) before printing ${String(text)}; got: ${out}`));
          } else waiters.push(check);
        };
        check();
      });
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
  const ready = options.readyText === undefined ? 'ready' : options.readyText;
  if (ready !== null) {
    try {
      await target.waitFor(ready, 60_000); // start-up of a fresh process can take long on a loaded machine
    } catch (e) {
      await target.kill();
      throw e;
    }
  }
  return target;
}

/** Registers an afterAll hook that kills every target this test file started. */
export function killTargetsAfterAll(): void {
  afterAll(async () => {
    await Promise.all(
      [...live].map(
        (c) =>
          new Promise<void>((res) => {
            if (c.exitCode !== null || c.signalCode !== null) return res();
            c.once('exit', () => res());
            c.kill('SIGKILL');
          }),
      ),
    );
  });
}
