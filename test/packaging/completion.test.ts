/**
 * `hotpatch completion bash` is generated from the command tree: sourced in a real bash, it
 * completes every command `hotpatch --help` lists and every long option of each command's
 * `--help`, option values by kind (pids, files, directories) and declared choices.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
let dir = '';
let script = '';

beforeAll(async () => {
  if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-completion-'));
  script = join(dir, 'hotpatch.bash');
  writeFileSync(script, (await run('node', [CLI, 'completion', 'bash'])).stdout);
}, 120_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** What the completion function offers for the command line `words` (the last word is being completed). */
async function complete(words: string[], cwd = dir): Promise<string[]> {
  const arr = words.map((w) => `'${w.replace(/'/g, "'\\''")}'`).join(' ');
  const { stdout } = await run('bash', ['-c', `source '${script}'; COMP_WORDS=(${arr}); COMP_CWORD=${words.length - 1}; _hotpatch; printf '%s\\n' "\${COMPREPLY[@]}"`], { cwd });
  return stdout.split('\n').filter((l) => l !== '');
}

/** Lines of one section of commander's help ("Options:", "Commands:"), as test/docs/help.test.ts reads them. */
function section(text: string, title: string): string[] {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trim() === title);
  const out: string[] = [];
  for (const l of start < 0 ? [] : lines.slice(start + 1)) {
    if (l.trim() === '') break;
    out.push(l);
  }
  return out;
}

function commandsOf(text: string): string[] {
  return section(text, 'Commands:').map((l) => /^ {2}([a-z][a-z0-9-]*)\b/.exec(l)?.[1]).filter((c): c is string => c !== undefined && c !== 'help');
}

function longOptionsOf(text: string): string[] {
  return section(text, 'Options:').flatMap((l) => {
    const m = /^ {2}(?:-[A-Za-z], )?(--[a-z][a-z0-9-]*)/.exec(l);
    return m ? [m[1]!] : [];
  });
}

async function help(args: string[]): Promise<string> {
  return (await run('node', [CLI, ...args, '--help'], { env: { ...process.env, COLUMNS: '200' } })).stdout;
}

describe('hotpatch completion bash', () => {
  it('is valid bash and registers a completion for hotpatch', async () => {
    const { stdout } = await run('bash', ['-c', `source '${script}'; complete -p hotpatch`]);
    expect(stdout.trim()).toBe('complete -F _hotpatch hotpatch');
  });

  it('completes every command of `hotpatch --help`', async () => {
    const commands = commandsOf(await help([]));
    expect(commands).toEqual(expect.arrayContaining(['apply', 'guard', 'completion']));
    expect(await complete(['hotpatch', ''])).toEqual(expect.arrayContaining([...commands, 'help', '--help', '--version']));
    expect(await complete(['hotpatch', 'ap'])).toEqual(['apply']);
  });

  it("completes every long option of every command's --help", async () => {
    const commands = commandsOf(await help([]));
    const missing: string[] = [];
    for (const cmd of commands) {
      const declared = longOptionsOf(await help([cmd]));
      const offered = await complete(['hotpatch', cmd, '--']);
      for (const o of declared) if (!offered.includes(o)) missing.push(`${cmd} ${o}`);
    }
    expect(missing).toEqual([]);
    expect(await complete(['hotpatch', 'apply', 'x.hpk', '--ti'])).toEqual(['--timeout']);
  });

  it('completes values: pids for --pid, files for --policy, directories for --state-dir, declared choices', async () => {
    expect(await complete(['hotpatch', 'guard', '--pid', String(process.pid).slice(0, -1)])).toContain(String(process.pid));
    writeFileSync(join(dir, 'guard-policy.json'), '{}');
    expect(await complete(['hotpatch', 'guard', '--policy', 'guard-p'])).toEqual(['guard-policy.json']);
    const sub = mkdtempSync(join(dir, 'state-'));
    expect(await complete(['hotpatch', 'verify', '--state-dir', 'state-'])).toEqual([sub.slice(dir.length + 1)]);
    expect(await complete(['hotpatch', 'completion', ''])).toEqual(['bash']);
    expect(await complete(['hotpatch', 'help', 'gu'])).toEqual(['guard']);
  });

  it('an unknown shell is a usage error; --json wraps the script', async () => {
    const bad = await run('node', [CLI, 'completion', 'zsh']).catch((e: { code: number; stderr: string }) => e);
    expect((bad as { code: number }).code).toBe(2);
    const doc = JSON.parse((await run('node', [CLI, 'completion', 'bash', '--json'])).stdout) as { shell: string; script: string };
    expect(doc.shell).toBe('bash');
    expect(doc.script).toContain('complete -F _hotpatch hotpatch');
  });
});
