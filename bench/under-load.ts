/**
 * Zero downtime, proven (issue 5 §6): the demo HTTP server (samples/demo/server.c, 8 worker
 * threads) serves a keep-alive load from a generator in another process (src/load) while this
 * process applies and removes a real patch to its request-path function `echo_reply` 1,000 times.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/under-load.js [--cycles 1000] [--baseline 5]
 *                                                            [--connections 8] [--workers 8] [--json]
 *
 * The package is made by the builder (src/patch/builder) from the running build and the build with
 * -DHOTPATCH_DEMO_FIXED, exactly as `hotpatch build` would, and applied through the updater library
 * (src/patch/updater: the code behind `hotpatch apply/remove --pid`). Prints requests served, failed
 * requests (must be 0), latency p50/p99 without and with patching, and the pause figures.
 * Exit status 1 when a request failed or the fix was not observed. Bounded to ~3 minutes.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseElf } from '../src/elf/index.js';
import { LoadProcess } from '../src/load/load-process.js';
import { arg, percentile, repoRoot } from './common.js';
import type { LoadStats } from '../src/load/load-generator.js';
import { buildPatch } from '../src/patch/builder/index.js';
import { createPackage, encodePackage } from '../src/patch/package/index.js';
import { applyPackage, loadPackage, removeFromProcesses, type ProcessResult } from '../src/patch/updater/index.js';



const cycles = Number(arg('--cycles', '1000'));
const baselineSeconds = Number(arg('--baseline', '5'));
const connections = Number(arg('--connections', '8'));
const workers = Number(arg('--workers', '8'));
const json = process.argv.includes('--json');
/** Hard bound on the patching phase so the whole bench stays near 3 minutes on a slow machine. */
const PATCH_PHASE_LIMIT_MS = 150_000;
const BUILD_FLAGS = ['-O2', '-pthread', '-fpatchable-function-entry=7,5', '-ffunction-sections', '-Wl,--emit-relocs'];

function log(s: string): void {
  process.stderr.write(`${s}\n`);
}


function pauseSummary(values: number[]): { count: number; medianMicros: number; p99Micros: number; maxMicros: number } {
  const s = [...values].sort((a, b) => a - b);
  return { count: s.length, medianMicros: Math.round(percentile(s, 50)), p99Micros: Math.round(percentile(s, 99)), maxMicros: Math.round(s[s.length - 1] ?? 0) };
}

/** GET http://127.0.0.1:PORT/PATH on a fresh connection; resolves to the body. */
function fetchBody(port: number, path: string): Promise<Buffer> {
  return new Promise((res, rej) => {
    get({ host: '127.0.0.1', port, path, agent: false }, (r) => {
      const chunks: Buffer[] = [];
      r.on('data', (c: Buffer) => chunks.push(c));
      r.on('end', () => res(Buffer.concat(chunks)));
      r.on('error', rej);
    }).on('error', rej);
  });
}

async function startServer(exe: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(exe, ['0', String(workers)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((res, rej) => {
    let out = '';
    const timer = setTimeout(() => rej(new Error(`server did not start: ${out}`)), 10_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /ready (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        res(Number(m[1]));
      }
    });
    child.once('exit', (c) => rej(new Error(`server exited (${c})`)));
  });
  return { child, port };
}

function check(r: ProcessResult, what: string): ProcessResult {
  if (r.status !== 'patched' && r.status !== 'removed') throw new Error(`${what} failed: ${r.status} ${r.code ?? ''} ${r.reason ?? ''}`);
  return r;
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-under-load-'));
  const src = join(repoRoot(), 'samples/demo/server.c');
  const oldExe = join(dir, 'server');
  const newExe = join(dir, 'server.fixed');
  mkdirSync(dir, { recursive: true });
  execFileSync('gcc', [...BUILD_FLAGS, '-o', oldExe, src]);
  execFileSync('gcc', [...BUILD_FLAGS, '-DHOTPATCH_DEMO_FIXED', '-o', newExe, src]);
  const oldBytes = new Uint8Array(readFileSync(oldExe));
  const { plan, report } = buildPatch(oldBytes, new Uint8Array(readFileSync(newExe)), { oldName: 'server', newName: 'server.fixed' });
  const pkgPath = join(dir, 'echo-fix.hpk');
  const pkg = createPackage(plan, { description: 'echo_reply: clamp len to the message length' });
  writeFileSync(pkgPath, encodePackage(pkg));
  const loaded = loadPackage(pkgPath, { allowUnsigned: true });
  log(`package ${pkg.id}: ${report.changed.map((c) => `${c.name} (${c.entry}, ${c.codeSize} bytes)`).join(', ')} — built by the builder from server.c and server.c -DHOTPATCH_DEMO_FIXED (build-id ${parseElf(oldBytes).buildId})`);

  const { child: server, port } = await startServer(oldExe);
  let load: LoadProcess | undefined;
  try {
    const pid = server.pid!;
    // The bug and the fix, observed from outside: ask for 40 bytes of a 2-byte message.
    const leakBefore = (await fetchBody(port, '/echo?msg=hi&len=40')).length;
    check((await applyPackage(loaded, { pids: [pid] })).results[0]!, 'apply');
    const leakPatched = (await fetchBody(port, '/echo?msg=hi&len=40')).length;
    check((await removeFromProcesses(pkg.id, { pids: [pid] })).results[0]!, 'remove');
    const leakRemoved = (await fetchBody(port, '/echo?msg=hi&len=40')).length;
    log(`echo of a 2-byte message asking for 40 bytes: ${leakBefore} bytes (bug), ${leakPatched} patched, ${leakRemoved} after remove`);

    load = await LoadProcess.start({ port, connections, path: '/echo?msg=hello-hotpatch&len=14', expectBody: 'hello-hotpatch' });
    await load.stats(); // discard warm-up
    log(`baseline: ${baselineSeconds} s of load, ${workers} workers, ${connections} connections...`);
    await new Promise((r) => setTimeout(r, baselineSeconds * 1000));
    const baseline = await load.stats();

    log(`patching: apply + remove ${cycles} times under load...`);
    const applyPauses: number[] = [];
    const removePauses: number[] = [];
    const applyTotal: number[] = [];
    const removeTotal: number[] = [];
    let attemptsOver1 = 0;
    let done = 0;
    const start = Date.now();
    for (; done < cycles && Date.now() - start < PATCH_PHASE_LIMIT_MS; done++) {
      const a = check((await applyPackage(loaded, { pids: [pid] })).results[0]!, `apply #${done + 1}`);
      const r = check((await removeFromProcesses(pkg.id, { pids: [pid] })).results[0]!, `remove #${done + 1}`);
      applyPauses.push(a.pauseMicros);
      removePauses.push(r.pauseMicros);
      applyTotal.push(a.totalMicros ?? 0);
      removeTotal.push(r.totalMicros ?? 0);
      if ((a.attempts ?? 1) > 1 || (r.attempts ?? 1) > 1) attemptsOver1++;
      if ((done + 1) % 100 === 0) log(`  ${done + 1}/${cycles} cycles (${((Date.now() - start) / 1000).toFixed(1)} s)`);
    }
    const patchSeconds = (Date.now() - start) / 1000;
    const patching = await load.stats();
    const final = await load.stop();
    load = undefined;
    const served = baseline.requests + patching.requests + final.requests;
    const failed = baseline.failures + patching.failures + final.failures;
    const errors = [...baseline.errors, ...patching.errors, ...final.errors].slice(0, 5);
    const result = {
      package: { id: pkg.id, functions: report.changed.map((c) => c.name), builtBy: 'builder' },
      server: { workers, connections },
      fixObserved: { bugBytes: leakBefore, patchedBytes: leakPatched, removedBytes: leakRemoved },
      cycles: done,
      cyclesRequested: cycles,
      patchPhaseSeconds: patchSeconds,
      requestsServed: served,
      failedRequests: failed,
      errors,
      latency: { baseline: latency(baseline), patching: latency(patching) },
      throughput: { baselinePerSecond: Math.round(baseline.requests / baseline.seconds), patchingPerSecond: Math.round(patching.requests / patching.seconds) },
      pause: { apply: pauseSummary(applyPauses), remove: pauseSummary(removePauses), all: pauseSummary([...applyPauses, ...removePauses]) },
      endToEnd: { apply: pauseSummary(applyTotal), remove: pauseSummary(removeTotal) },
      cyclesWithBusyRetry: attemptsOver1,
      totalSeconds: (Date.now() - t0) / 1000,
    };
    if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else printHuman(result);
    const fixOk = leakBefore === 40 && leakPatched === 2 && leakRemoved === 40;
    return failed === 0 && fixOk && done === cycles ? 0 : 1;
  } finally {
    load?.kill();
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

function latency(s: LoadStats): { requests: number; seconds: number; p50Micros: number; p99Micros: number; maxMicros: number } {
  return { requests: s.requests, seconds: Number(s.seconds.toFixed(2)), p50Micros: s.p50Micros, p99Micros: s.p99Micros, maxMicros: s.maxMicros };
}

function printHuman(r: {
  cycles: number; cyclesRequested: number; patchPhaseSeconds: number; requestsServed: number; failedRequests: number; errors: string[];
  latency: { baseline: ReturnType<typeof latency>; patching: ReturnType<typeof latency> };
  throughput: { baselinePerSecond: number; patchingPerSecond: number };
  pause: Record<'apply' | 'remove' | 'all', ReturnType<typeof pauseSummary>>;
  endToEnd: Record<'apply' | 'remove', ReturnType<typeof pauseSummary>>;
  cyclesWithBusyRetry: number; totalSeconds: number;
}): void {
  const out = (s: string) => process.stdout.write(`${s}\n`);
  out(`cycles (apply + remove of echo_reply): ${r.cycles}/${r.cyclesRequested} in ${r.patchPhaseSeconds.toFixed(1)} s (${r.cyclesWithBusyRetry} needed a busy retry)`);
  out(`requests served: ${r.requestsServed}   failed requests: ${r.failedRequests}${r.errors.length ? `  (${r.errors.join('; ')})` : ''}`);
  out(`latency without patching: p50 ${r.latency.baseline.p50Micros} µs  p99 ${r.latency.baseline.p99Micros} µs  max ${r.latency.baseline.maxMicros} µs  (${r.throughput.baselinePerSecond} req/s)`);
  out(`latency while patching:   p50 ${r.latency.patching.p50Micros} µs  p99 ${r.latency.patching.p99Micros} µs  max ${r.latency.patching.maxMicros} µs  (${r.throughput.patchingPerSecond} req/s)`);
  for (const k of ['apply', 'remove', 'all'] as const) {
    const p = r.pause[k];
    out(`pause ${k.padEnd(6)}: median ${p.medianMicros} µs  p99 ${p.p99Micros} µs  max ${p.maxMicros} µs  (n=${p.count})`);
  }
  for (const k of ['apply', 'remove'] as const) {
    const p = r.endToEnd[k];
    out(`end-to-end ${k.padEnd(6)}: median ${(p.medianMicros / 1000).toFixed(2)} ms  p99 ${(p.p99Micros / 1000).toFixed(2)} ms`);
  }
  out(`total ${r.totalSeconds.toFixed(1)} s`);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`under-load: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
