/**
 * Guard benchmark:
 * 1. verification throughput — bytes of mapped code and tables compared per CPU-second (one core:
 *    the verifier is single-threaded), with cold caches (module files parsed and hashed, dpkg index
 *    built) and warm caches (every byte still compared), and with the cheap smaps signal on;
 * 2. the guard's own CPU use while it watches 50 processes at the default interval for ~30 s.
 *
 * Run: npx vite-node bench/guard.ts [--seconds 30] [--processes 50]   (as root)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_INTERVAL_MS, Guard, GuardMetrics, VerifierCaches, verifyProcesses, type StructureCode } from '../src/guard/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = existsSync(join(here, '../test/fixtures')) ? resolve(here, '..') : resolve(here, '../..');

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const SECONDS = arg('seconds', 30);
const PROCESSES = arg('processes', 50);
const children: ChildProcess[] = [];

function cleanup(): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

async function startAndWait(cmd: string, args: string[]): Promise<number> {
  const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
  children.push(c);
  await new Promise<void>((res, rej) => {
    let out = '';
    c.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready')) res();
    });
    c.once('exit', (code) => rej(new Error(`${cmd} exited (${code}) before it was ready`)));
  });
  return c.pid!;
}

/** A mix of ordinary programs: multi-threaded C, bash, python3, node. */
async function startTargets(n: number): Promise<number[]> {
  const dir = join(tmpdir(), 'hotpatch-bench-guard');
  mkdirSync(dir, { recursive: true });
  const mt = join(dir, 'mt');
  execFileSync('gcc', ['-O2', '-o', mt, join(repo, 'test/fixtures/guard/mt.c'), '-lpthread']);
  const kinds: Array<[string, string[]]> = [
    [mt, []],
    ['/usr/bin/bash', ['-c', 'echo ready; read line']],
    ['/usr/bin/python3', ['-c', 'import sys; print("ready", flush=True); sys.stdin.read()']],
  ];
  const pids: number[] = [];
  // Two node processes (big: ~90 MB of code each), the rest round-robin.
  for (let i = 0; i < Math.min(2, n); i++) pids.push(await startAndWait('/usr/bin/node', ['-e', 'console.log("ready"); process.stdin.resume()']));
  for (let i = pids.length; i < n; i++) {
    const [cmd, args] = kinds[i % kinds.length]!;
    pids.push(await startAndWait(cmd, args));
  }
  return pids;
}

function cpuSeconds(u: NodeJS.CpuUsage): number {
  return (u.user + u.system) / 1e6;
}

const MB = 1024 * 1024;

async function throughput(pids: number[], label: string, caches: VerifierCaches, cleanCacheMs: number): Promise<void> {
  // Structure 7 stops targets with ptrace; it has no bytes to compare, so it is left out here.
  const structures: StructureCode[] = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10];
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const results = await verifyProcesses(pids, { caches, structures, cleanCacheMs });
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(process.cpuUsage(c0));
  const bytes = results.reduce((a, r) => a + r.bytes, 0);
  const findings = results.reduce((a, r) => a + r.findings.length, 0);
  console.log(
    `${label.padEnd(34)} ${String(results.filter((r) => r.checked).length).padStart(3)} processes  ${(bytes / MB).toFixed(1).padStart(8)} MB compared  ` +
      `cpu ${cpu.toFixed(2)} s  wall ${wall.toFixed(2)} s  ${(bytes / MB / cpu).toFixed(1).padStart(7)} MB/s per core  findings ${findings}`,
  );
}

async function main(): Promise<void> {
  console.log(`starting ${PROCESSES} target processes...`);
  const pids = await startTargets(PROCESSES);
  console.log('\n1. verification throughput (one core)');
  const caches = new VerifierCaches();
  await throughput(pids.slice(0, 10), 'cold caches (10 processes)', caches, 0);
  await throughput(pids, `warm caches, full compare (${pids.length})`, caches, 0);
  await throughput(pids, `warm caches, full compare again`, caches, 0);
  await throughput(pids, 'cheap smaps signal, first pass', caches, 60_000);
  await throughput(pids, 'cheap smaps signal, steady state', caches, 60_000);

  console.log(`\n2. guard CPU use: ${pids.length} processes, default interval ${DEFAULT_INTERVAL_MS / 1000} s, ${SECONDS} s`);
  const metrics = new GuardMetrics();
  const guard = new Guard({ pids, metrics, caches: new VerifierCaches() });
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  guard.start();
  // Steady state: from the end of the first (cold) cycle on.
  while (metrics.cyclesTotal < 1 && performance.now() - t0 < SECONDS * 1000) await new Promise((r) => setTimeout(r, 100));
  const c1 = process.cpuUsage();
  const t1 = performance.now();
  const firstCpu = cpuSeconds(process.cpuUsage(c0));
  await new Promise((r) => setTimeout(r, Math.max(0, SECONDS * 1000 - (t1 - t0))));
  const steadyCpu = cpuSeconds(process.cpuUsage(c1));
  const steadyWall = (performance.now() - t1) / 1000;
  await guard.stop();
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(process.cpuUsage(c0));
  console.log(`   whole run: wall ${wall.toFixed(1)} s, guard cpu ${cpu.toFixed(2)} s = ${((100 * cpu) / wall).toFixed(1)} % of one core`);
  console.log(`   first (cold) cycle: cpu ${firstCpu.toFixed(2)} s; steady state: ${((100 * steadyCpu) / Math.max(steadyWall, 0.001)).toFixed(1)} % of one core over ${steadyWall.toFixed(1)} s`);
  console.log(`   checks ${metrics.checksTotal}, bytes compared ${(metrics.bytesVerifiedTotal / MB).toFixed(1)} MB, cycles ${metrics.cyclesTotal}, last cycle ${metrics.lastFullCycleSeconds.toFixed(1)} s, longest unchecked ${metrics.maxItemAgeSeconds.toFixed(1)} s`);
  console.log(`   findings ${[...metrics.findingsTotal.values()].reduce((a, b) => a + b, 0)}, processes watched ${metrics.processesWatched}`);
  const sig = (guard as { signal?: { polls: number; triggers: number; pollCpuMicros: number } }).signal;
  if (sig !== undefined && sig.polls > 0) {
    console.log(`   code-write signal: ${sig.polls} polls, ${(sig.pollCpuMicros / sig.polls).toFixed(0)} µs CPU per process per poll, ${((sig.pollCpuMicros / 1e6 / wall) * 100).toFixed(1)} % of one core, ${sig.triggers} triggered checks`);
  }
  cleanup();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
