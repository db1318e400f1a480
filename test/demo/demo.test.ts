import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');

interface Report {
  ok: boolean;
  steps: Array<{ title: string; ok: boolean; figures: Record<string, number | string | boolean> }>;
}

describe('hotpatch demo', () => {
  it('runs every step green from the built CLI, with zero failed requests', async () => {
    const t0 = Date.now();
    const { stdout, stderr } = await run('node', [CLI, 'demo', '--json'], { maxBuffer: 16 << 20, timeout: 180_000 });
    const seconds = (Date.now() - t0) / 1000;
    const report = JSON.parse(stdout) as Report;
    console.log(`demo took ${seconds.toFixed(1)} s`);
    expect(report.ok, stderr).toBe(true);
    expect(report.steps.length).toBe(8);
    for (const s of report.steps) expect(s.ok, s.title).toBe(true);
    // The narration went to stderr (stdout holds only the JSON) and fits 80 columns.
    expect(stderr).toContain('SESSION-TOKEN');
    for (const line of stderr.split('\n')) expect(line.length, line).toBeLessThanOrEqual(80);
    const failures = report.steps.map((s) => s.figures.failures).filter((f) => f !== undefined);
    expect(failures.length).toBeGreaterThanOrEqual(3);
    for (const f of failures) expect(f).toBe(0);
    // The demo service is built hotpatch-ready: switched without stopping a thread.
    expect(report.steps[3]!.figures).toMatchObject({ protocol: 'live', pauseMicros: 0 });
    expect(seconds).toBeLessThan(120);
  });
});
