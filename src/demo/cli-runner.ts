/** Runs the `hotpatch` command itself as a child process, the way the demo shows it to a user. */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface CliRun {
  code: number;
  /** Parsed stdout (commands run with --json). */
  json: unknown;
  stderr: string;
  millis: number;
}

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/** Runs `hotpatch ARGS --json` and parses its JSON document; never throws for a non-zero exit. */
export function runHotpatch(args: string[], cwd?: string): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CLI, ...args, '--json'], { cwd, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      let json: unknown = null;
      try {
        json = stdout.trim() ? JSON.parse(stdout) : null;
      } catch (e) {
        reject(new Error(`hotpatch ${args[0]} printed no JSON (exit ${code}): ${stderr || stdout}`, { cause: e }));
        return;
      }
      resolve({ code, json, stderr, millis: Date.now() - t0 });
    });
  });
}
