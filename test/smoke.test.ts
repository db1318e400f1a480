import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');

describe('hotpatch CLI', () => {
  it('prints help and exits 0', async () => {
    const { stdout } = await run('node', [CLI, '--help']);
    expect(stdout).toContain('Usage: hotpatch');
  });
  it('exits 2 on an unknown command', async () => {
    await expect(run('node', [CLI, 'no-such-command'])).rejects.toMatchObject({ code: 2 });
  });
});
