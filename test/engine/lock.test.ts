/**
 * The per-process lock (flock): contenders in separate processes never hold it at once, a
 * killed holder's lock is free again at once, and a held lock is refused with PROCESS_LOCKED.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { lockProcess } from '../../src/patch/engine/lock.js';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const LOCK = JSON.stringify(join(REPO_ROOT, 'dist/src/patch/engine/lock.js'));

describe('the per-process lock', () => {
  it('is never held by two contenders at once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-lock-'));
    const script = join(dir, 'contender.mjs');
    // Inside the lock, each contender creates a marker with O_EXCL: a second holder would fail.
    writeFileSync(
      script,
      `import { lockProcess } from ${LOCK};\nimport { openSync, closeSync, unlinkSync } from 'node:fs';\n` +
        `process.env.HOTPATCH_LOCK_DIR = ${JSON.stringify(dir)};\nlet held = 0;\nconst end = Date.now() + 1500;\n` +
        `while (Date.now() < end) {\n  let l;\n  try { l = lockProcess(424242, 1n); } catch (e) { if (e.code !== 'PROCESS_LOCKED') throw e; continue; }\n` +
        `  const m = openSync(${JSON.stringify(join(dir, 'inside'))}, 'wx'); held++;\n  const t = Date.now() + 2; while (Date.now() < t);\n` +
        `  closeSync(m); unlinkSync(${JSON.stringify(join(dir, 'inside'))}); l.release();\n}\nconsole.log(held);\n`,
    );
    const counts = await Promise.all(Array.from({ length: 6 }, () => run('node', [script]).then((r) => Number(r.stdout.trim()))));
    expect(counts.reduce((a, b) => a + b, 0)).toBeGreaterThan(20);
  });

  it('is refused while held and free again as soon as the holder is killed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-lock-'));
    process.env.HOTPATCH_LOCK_DIR = dir;
    const holder = spawn('node', ['--input-type=module', '-e', `process.env.HOTPATCH_LOCK_DIR = ${JSON.stringify(dir)}; const { lockProcess } = await import(${LOCK}); lockProcess(424243, 7n); console.log('locked'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((res) => holder.stdout!.on('data', (d: Buffer) => d.toString().includes('locked') && res()));
    expect(() => lockProcess(424243, 7n)).toThrow(expect.objectContaining({ code: 'PROCESS_LOCKED', message: expect.stringContaining(`pid ${holder.pid}`) }));
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    const l = lockProcess(424243, 7n);
    l.release();
    delete process.env.HOTPATCH_LOCK_DIR;
  });
});
