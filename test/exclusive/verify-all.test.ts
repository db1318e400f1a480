/**
 * Zero false positives machine-wide: `hotpatch verify --all` with ordinary programs running (bash,
 * python3, node, sqlite3, PostgreSQL, a multi-threaded C program) reports nothing for any process
 * that runs a program from a file. Runs alone (vitest.exclusive.config.ts), after the other test
 * files, whose targets are tampered with on purpose.
 *
 * The one thing it may report is real: a process whose executable is itself a memfd (a program
 * executed without a file on disk — e.g. a sandbox's sealed-memfd tool binaries) is `memfd-code`.
 * Structure 7 (signal handlers) needs ptrace; it is covered per pid in test/guard, and left out
 * here so the test never stops processes it did not start.
 */
import { execFile } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killTargetsAfterAll, REPO_ROOT } from '../helpers/native.js';
import { childrenOf, startOrdinaryPrograms, type OrdinaryPrograms } from '../guard/ordinary.js';

const run = promisify(execFile);
killTargetsAfterAll();

let programs: OrdinaryPrograms;
beforeAll(async () => {
  programs = await startOrdinaryPrograms();
});
afterAll(async () => {
  await programs.stop();
});

function exeOf(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return '';
  }
}

interface VerifyDoc {
  checked: { processes: number; bytes: number };
  findings: Array<{ pid: number; code: number; kind: string; module: string | null; detail: string }>;
}

describe('hotpatch verify --all', () => {
  it('reports nothing for the programs of this machine that run from files', { timeout: 600_000 }, async () => {
    const ours = programs.targets.map((t) => t.pid);
    if (programs.pg) ours.push(programs.pg.proc.pid!, ...childrenOf(programs.pg.proc.pid!));
    const cli = join(REPO_ROOT, 'dist/src/cli/main.js');
    const result = await run('node', [cli, 'verify', '--all', '--no-ptrace', '--json'], { maxBuffer: 64 << 20 }).catch(
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    const doc = JSON.parse(result.stdout) as VerifyDoc;
    console.log(`verify --all: ${doc.checked.processes} processes, ${(doc.checked.bytes / 1e6).toFixed(0)} MB compared, ${doc.findings.length} findings`);
    expect(doc.checked.processes).toBeGreaterThanOrEqual(ours.length);
    const unexplained = doc.findings.filter((f) => !(f.kind === 'memfd-code' && exeOf(f.pid).startsWith('/memfd:')));
    expect(unexplained, JSON.stringify(unexplained, null, 1)).toEqual([]);
    for (const pid of ours) expect(doc.findings.filter((f) => f.pid === pid)).toEqual([]);
  });
});
