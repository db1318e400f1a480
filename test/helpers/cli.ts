/**
 * Running the built CLI from tests: `runCli` never rejects (exit code, signal and both streams
 * come back), and the environment of the test runner never leaks trust or fault switches into it.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from './native.js';

const run = promisify(execFile);

export const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');

export interface CliRun {
  /** Exit code; null when the CLI was killed (see `signal`). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The runner's environment without HOTPATCH_TRUSTED_KEYS and HOTPATCH_FAULT*, plus `env`. */
export function cliEnv(env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = { ...process.env };
  for (const k of Object.keys(base)) if (k === 'HOTPATCH_TRUSTED_KEYS' || k.startsWith('HOTPATCH_FAULT')) delete base[k];
  return { ...base, ...env };
}

/** Runs `hotpatch ARGS`; `timeoutMs` only guards against a hang (the CLI is killed, code null). */
export async function runCli(args: string[], options: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CliRun> {
  try {
    const { stdout, stderr } = await run('node', [CLI, ...args], { env: cliEnv(options.env), timeout: options.timeoutMs ?? 300_000, maxBuffer: 16 << 20 });
    return { code: 0, signal: null, stdout, stderr };
  } catch (e) {
    const x = e as { code?: number | string; signal?: NodeJS.Signals; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : null, signal: x.signal ?? null, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}
