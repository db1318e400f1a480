/**
 * Idle cost of `hotpatch agent` (issue #11): CPU of an agent with an empty store, discovering new
 * processes through the netlink process connector (`--discovery auto`, when this machine offers
 * it) or by polling /proc (`--discovery poll`), both at the default 0.2 s interval. Round by round,
 * interleaved, so a noisy machine affects both alike. Per round and mode: CPU over a quiet window
 * (whatever the machine does besides), CPU while this bench starts `/bin/true` 20 times a second
 * (process churn: a build, a busy host), and the latency of GET /metrics (is the event loop
 * responsive?).
 *
 *   node dist/bench/agent-idle.js [--rounds 3] [--seconds 10]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeKeyFiles } from '../src/patch/trust/index.js';
import { arg, percentile, repoRoot } from './common.js';

const cli = join(repoRoot(), 'dist/src/cli/main.js');
const rounds = Number(arg('--rounds', '3'));
const seconds = Number(arg('--seconds', '10'));
const CLK_TCK = 100;

const dir = mkdtempSync(join(tmpdir(), 'hotpatch-bench-agent-'));
const { publicKeyFile } = writeKeyFiles(join(dir, 'k.key'), { comment: 'bench' });

function cpuTicks(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function startAgent(mode: string, port: number): Promise<{ child: ChildProcess; discovery: string }> {
  const child = spawn(process.execPath, [cli, 'agent', '--store', join(dir, `store-${mode}`), '--trust', publicKeyFile, '--status-file', join(dir, `status-${mode}.json`), '--discovery', mode, '--metrics', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  for (let i = 0; i < 300 && !out.includes('"event":"ready"'); i++) await sleep(100);
  if (!out.includes('"event":"ready"')) throw new Error(`agent (${mode}) not ready: ${out}`);
  return { child, discovery: /"discovery":"(\w+)"/.exec(out)?.[1] ?? '?' };
}

/** CPU % of one core used by `pid` over `ms`, while `during` runs. */
async function cpuOver(pid: number, ms: number, during?: (stop: () => boolean) => Promise<void>): Promise<number> {
  const t0 = cpuTicks(pid);
  const w0 = performance.now();
  let done = false;
  const side = during?.(() => done);
  await sleep(ms);
  done = true;
  await side;
  return ((cpuTicks(pid) - t0) / CLK_TCK) * 1000 / (performance.now() - w0) * 100;
}

async function churn(stop: () => boolean): Promise<void> {
  while (!stop()) {
    spawnSync('/bin/true');
    await sleep(50);
  }
}

async function metricsLatency(port: number, n: number): Promise<number[]> {
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    lat.push(performance.now() - t0);
    await sleep(37); // not in step with the agent's timer
  }
  return lat;
}

const modes = ['auto', 'poll'];
const results = new Map<string, { quiet: number[]; churn: number[]; lat: number[]; discovery: string }>(modes.map((m) => [m, { quiet: [], churn: [], lat: [], discovery: '' }]));
try {
  for (let r = 0; r < rounds; r++) {
    for (const mode of r % 2 === 0 ? modes : [...modes].reverse()) {
      const port = 30000 + Math.floor(Math.random() * 20000);
      const { child, discovery } = await startAgent(mode, port);
      try {
        await sleep(2000); // past start-up
        const res = results.get(mode)!;
        res.discovery = discovery;
        res.quiet.push(await cpuOver(child.pid!, seconds * 1000));
        res.churn.push(await cpuOver(child.pid!, seconds * 1000, churn));
        res.lat.push(...await metricsLatency(port, 50));
      } finally {
        child.kill('SIGKILL');
      }
    }
  }
  const procs = spawnSync('sh', ['-c', 'ls -d /proc/[0-9]* | wc -l'], { encoding: 'utf8' }).stdout.trim();
  console.log(`hotpatch agent, empty store, 0.2 s interval, ${rounds} interleaved rounds of ${seconds} s (${procs} processes on the machine)`);
  console.log('mode                 discovery  CPU quiet (% of a core, per round)   CPU with 20 execs/s          GET /metrics ms p50 / p99');
  for (const [mode, res] of results) {
    const lat = [...res.lat].sort((a, b) => a - b);
    const f = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ').padEnd(28);
    console.log(`--discovery ${mode.padEnd(8)} ${res.discovery.padEnd(10)} ${f(res.quiet)}         ${f(res.churn)} ${percentile(lat, 50).toFixed(1)} / ${percentile(lat, 99).toFixed(1)}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
