/**
 * The user guide cannot drift from the CLI: every command that `hotpatch --help` lists has a
 * section in docs/user-guide.md, and every long option its `--help` declares is mentioned there.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const GUIDE = join(REPO_ROOT, 'docs/user-guide.md');

async function help(args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)('node', [CLI, ...args, '--help'], { encoding: 'utf8', env: { ...process.env, COLUMNS: '200' } });
  return stdout;
}

/** Lines of one section of commander's help ("Options:", "Commands:"), up to the next blank line. */
export function section(text: string, title: string): string[] {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trim() === title);
  if (start < 0) return [];
  const out: string[] = [];
  for (const l of lines.slice(start + 1)) {
    if (l.trim() === '') break;
    out.push(l);
  }
  return out;
}

/** Command names of the top-level help (without commander's own `help`). */
export function commandsOf(text: string): string[] {
  return section(text, 'Commands:')
    .map((l) => /^ {2}([a-z][a-z0-9-]*)\b/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined && c !== 'help');
}

/** Long options declared in a command's help ("  -o, --output <PKG>  ..." → "--output"). */
export function longOptionsOf(text: string): string[] {
  const out: string[] = [];
  for (const l of section(text, 'Options:')) {
    const m = /^ {2}(?:-[A-Za-z], )?(--[a-z][a-z0-9-]*)/.exec(l);
    if (m) out.push(m[1]!);
  }
  return out;
}

/** Whether `doc` mentions `option` as a whole word (`--pid` does not match `--pids`). */
export function mentions(doc: string, option: string): boolean {
  return new RegExp(`${option.replace(/[-]/g, '\\-')}(?![a-z0-9-])`).test(doc);
}

describe('docs/user-guide.md matches `hotpatch --help`', () => {
  let top = '';
  let guide = '';
  beforeAll(async () => {
    if (!existsSync(CLI)) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
    top = await help([]);
    guide = readFileSync(GUIDE, 'utf8');
  }, 120_000);

  it('the parsers find commands and options (the check below is not vacuous)', async () => {
    const commands = commandsOf(top);
    expect(commands).toEqual(expect.arrayContaining(['scan', 'build', 'keygen', 'sign', 'inspect', 'apply', 'remove', 'list', 'recover', 'verify', 'guard', 'demo']));
    expect(longOptionsOf(await help(['apply']))).toEqual(expect.arrayContaining(['--pid', '--all', '--cold', '--trust', '--timeout', '--dry-run', '--json', '--help']));
    expect(mentions('use --pid PID', '--pid')).toBe(true);
    expect(mentions('use --pids', '--pid')).toBe(false);
    expect(mentions(guide, '--no-such-option-anywhere')).toBe(false);
  });

  it('every command has its own section, and every long option of its --help is documented', async () => {
    const missing: string[] = [];
    const commands = commandsOf(top);
    const helps = await Promise.all(commands.map((cmd) => help([cmd])));
    for (const [i, cmd] of commands.entries()) {
      if (!new RegExp(`^#+ .*\`hotpatch ${cmd}\``, 'm').test(guide)) missing.push(`section for \`hotpatch ${cmd}\``);
      const options = longOptionsOf(helps[i]!);
      expect(options.length, `${cmd} --help lists no options`).toBeGreaterThan(0);
      for (const o of options) if (!mentions(guide, o)) missing.push(`${cmd} ${o}`);
    }
    expect(missing, `docs/user-guide.md does not mention: ${missing.join(', ')}`).toEqual([]);
  });

  it('every --help fits 80 columns and shows no "(default: [])"', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const run = promisify(execFile);
    const top = (await run('node', [CLI, '--help'])).stdout;
    const names = [...top.matchAll(/^  ([a-z]+) /gm)].map((m) => m[1]!).filter((n) => n !== 'help');
    expect(names.length).toBeGreaterThan(10);
    const texts = await Promise.all(names.map(async (name) => ({ name, text: (await run('node', [CLI, name, '--help'])).stdout })));
    for (const { name, text } of texts) {
      expect(text, name).not.toContain('(default: [])');
      const long = text.split('\n').filter((l) => l.length > 80);
      expect(long, name).toEqual([]);
    }
  }, 300_000);
});
