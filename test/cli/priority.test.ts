/**
 * The CLI runs nicer than the services it works on (src/cli/priority.ts): every thread of the
 * process, those Node started before our code included, gets nice 10 unless HOTPATCH_NICE says
 * otherwise; a CLI started nicer stays as nice as it was.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const MODULE = join(REPO_ROOT, 'dist/src/cli/priority.js');

/** Nice values of every thread of a node process that called yieldCpuToTargets(), read from /proc/self/task/x/stat. */
async function niceAfter(env: Record<string, string>, prefix: string[] = []): Promise<number[]> {
  const script = `import { readdirSync, readFileSync } from 'node:fs';
const { yieldCpuToTargets } = await import(${JSON.stringify(MODULE)});
yieldCpuToTargets();
const nice = readdirSync('/proc/self/task').map((t) => { const s = readFileSync('/proc/self/task/' + t + '/stat', 'utf8'); return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[16]); });
console.log(JSON.stringify(nice));`;
  const argv = [...prefix, process.execPath, '--input-type=module', '-e', script];
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'HOTPATCH_NICE'));
  const { stdout } = await run(argv[0]!, argv.slice(1), { env: { ...base, ...env } });
  return JSON.parse(stdout) as number[];
}

describe('the CLI yields the CPU to its targets', () => {
  it('sets nice 10 on every thread of the process by default', async () => {
    const def = await niceAfter({});
    expect(def.length).toBeGreaterThan(1); // Node's own threads are there too
    expect(def.every((n) => n === 10)).toBe(true);
  });

  it('follows HOTPATCH_NICE (0 = as started) and never makes a nicer CLI less nice', async () => {
    expect((await niceAfter({ HOTPATCH_NICE: '0' })).every((n) => n === 0)).toBe(true);
    expect((await niceAfter({ HOTPATCH_NICE: '5' })).every((n) => n === 5)).toBe(true);
    expect((await niceAfter({}, ['nice', '-n', '15'])).every((n) => n === 15)).toBe(true);
  });
});
