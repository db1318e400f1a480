/**
 * Pause benchmark: how long a running process is stopped when hotpatch changes 5 bytes of its
 * code, for targets with 1, 8 and 64 busy threads — and the same write done with
 * `gdb -p PID -batch`, the tool a user would otherwise reach for.
 *
 * Each hotpatch iteration is the engine's frozen window: freeze every thread (PTRACE_SEIZE +
 * PTRACE_INTERRUPT), check that no thread executes or returns into the 5 bytes (rip + one bulk
 * stack read per thread), read-compare-write the bytes through /proc/PID/mem, thaw. The pause is
 * first interrupt → last detach as measured by FrozenProcess.pauseMicros; end-to-end adds
 * everything around it in this process (opening /proc files, reading the task list...).
 *
 * Usage: node dist/bench/pause.js [--iterations 200] [--gdb-runs 5] [--threads 1,8,64] [--json]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findThreadsUsing, freezeProcess } from '../src/process/control/index.js';
import { percentile } from './common.js';

interface Options {
  iterations: number;
  gdbRuns: number;
  threads: number[];
  json: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { iterations: 200, gdbRuns: 5, threads: [1, 8, 64], json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--iterations') o.iterations = Number(next());
    else if (a === '--gdb-runs') o.gdbRuns = Number(next());
    else if (a === '--threads') o.threads = next().split(',').map(Number);
    else if (a === '--json') o.json = true;
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

/** The repository root, from dist/bench/pause.js or bench/pause.ts. */
function repoRoot(): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  for (const up of ['..', '../..']) {
    const r = resolve(here, up);
    if (existsSync(join(r, 'package.json')) && existsSync(join(r, 'test/fixtures/process-control/threads.c'))) return r;
  }
  throw new Error('cannot find the repository root (test/fixtures/process-control/threads.c)');
}

interface Target {
  child: ChildProcess;
  pid: number;
  valueFn: bigint;
  ask(cmd: string, re: RegExp): Promise<string>;
}

async function startTarget(prog: string, threads: number): Promise<Target> {
  const child = spawn(prog, [String(threads)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const waitFor = async (re: RegExp, from: number): Promise<string> => {
    for (let i = 0; i < 3000; i++) {
      const m = re.exec(out.slice(from));
      if (m) return m[0];
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`target did not print ${re}: ${out}`);
  };
  await waitFor(/ready/, 0);
  const valueFn = BigInt(/value_fn=(0x[0-9a-f]+)/.exec(out)![1]!);
  const ask = async (cmd: string, re: RegExp): Promise<string> => {
    const from = out.length;
    child.stdin!.write(`${cmd}\n`);
    return waitFor(re, from);
  };
  // Wait until every worker spins (thread start-up is slow on a loaded machine).
  for (let i = 0; i < 500; i++) {
    const line = await ask('check', /advanced (\d+)/);
    if (Number(line.split(' ')[1]) === threads - 1) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  return { child, pid: child.pid!, valueFn, ask };
}


interface Row {
  threads: number;
  iterations: number;
  pauseMedianMicros: number;
  pauseP99Micros: number;
  endToEndMedianMicros: number;
  endToEndP99Micros: number;
  gdbRuns: number;
  gdbEndToEndMedianMicros: number;
  /** gdb -p run minus a gdb run that attaches to nothing: roughly how long gdb holds the target. */
  gdbAttachedMedianMicros: number;
  ratioEndToEnd: number;
  ratioPause: number;
}

function hotpatchRuns(t: Target, iterations: number): { pauses: number[]; e2e: number[] } {
  const expected = new Uint8Array([0xb8, 0x01, 0x00, 0x00, 0x00]); // mov eax, 1
  const site = { start: t.valueFn, end: t.valueFn + 5n };
  const pauses: number[] = [];
  const e2e: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    const f = freezeProcess(t.pid);
    try {
      // Safety check exactly as the engine does it, then the write.
      const uses = findThreadsUsing(f, [{ start: site.start + 1n, end: site.end }]);
      if (uses.length === 0) f.writeMemoryChecked(site.start, expected, expected);
    } finally {
      f.thaw();
    }
    e2e.push(Number(process.hrtime.bigint() - t0) / 1000);
    pauses.push(f.pauseMicros);
  }
  return { pauses, e2e };
}

function gdbRuns(t: Target | undefined, runs: number): number[] {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const args = t
      ? ['-p', String(t.pid), '-batch', '-nx', '-ex', `set {unsigned char[5]}0x${t.valueFn.toString(16)} = {0xb8, 1, 0, 0, 0}`]
      : ['-batch', '-nx', '-ex', 'print 1'];
    const t0 = process.hrtime.bigint();
    execFileSync('gdb', args, { stdio: 'ignore' });
    times.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return times;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const root = repoRoot();
  const dir = mkdtempSync(join(tmpdir(), 'hotpatch-bench-'));
  const prog = join(dir, 'threads');
  execFileSync('gcc', ['-O2', '-o', prog, join(root, 'test/fixtures/process-control/threads.c'), '-lpthread']);
  let haveGdb = o.gdbRuns > 0;
  if (haveGdb) {
    try {
      execFileSync('gdb', ['--version'], { stdio: 'ignore' });
    } catch {
      haveGdb = false;
    }
  }
  const gdbIdle = haveGdb ? gdbRuns(undefined, Math.max(1, Math.min(o.gdbRuns, 3))).sort((a, b) => a - b) : [];
  const rows: Row[] = [];
  try {
    for (const n of o.threads) {
      const t = await startTarget(prog, n);
      try {
        hotpatchRuns(t, Math.min(10, o.iterations)); // warm-up (JIT, caches)
        const { pauses, e2e } = hotpatchRuns(t, o.iterations);
        const g = haveGdb ? gdbRuns(t, o.gdbRuns).sort((a, b) => a - b) : [];
        // Still alive and unchanged.
        await t.ask('value', /value 1\b/);
        pauses.sort((a, b) => a - b);
        e2e.sort((a, b) => a - b);
        const gMed = percentile(g, 50);
        const gAttached = gMed - percentile(gdbIdle, 50);
        rows.push({
          threads: n,
          iterations: o.iterations,
          pauseMedianMicros: percentile(pauses, 50),
          pauseP99Micros: percentile(pauses, 99),
          endToEndMedianMicros: percentile(e2e, 50),
          endToEndP99Micros: percentile(e2e, 99),
          gdbRuns: g.length,
          gdbEndToEndMedianMicros: gMed,
          gdbAttachedMedianMicros: gAttached,
          ratioEndToEnd: gMed / percentile(e2e, 50),
          ratioPause: gAttached / percentile(pauses, 50),
        });
      } finally {
        t.child.kill('SIGKILL');
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ rows }, null, 2)}\n`);
    return;
  }
  const f = (v: number, d = 0): string => (Number.isFinite(v) ? v.toFixed(d) : '-');
  const head = ['threads', 'pause med µs', 'pause p99 µs', 'e2e med µs', 'e2e p99 µs', 'gdb e2e ms', 'gdb attached ms', 'gdb/hp e2e', 'gdb/hp pause'];
  const lines = rows.map((r) => [
    String(r.threads),
    f(r.pauseMedianMicros),
    f(r.pauseP99Micros),
    f(r.endToEndMedianMicros),
    f(r.endToEndP99Micros),
    f(r.gdbEndToEndMedianMicros / 1000, 1),
    f(r.gdbAttachedMedianMicros / 1000, 1),
    `${f(r.ratioEndToEnd, 0)}x`,
    `${f(r.ratioPause, 0)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(`hotpatch pause benchmark: freeze + stack check + 5-byte write + thaw, ${o.iterations} runs per target; gdb ${o.gdbRuns} runs`);
  console.log(fmt(head));
  for (const l of lines) console.log(fmt(l));
  console.log('targets: median pause <= 1000 µs at 8 threads, <= 5000 µs at 64 threads');
  console.log(`load average at the end: ${(await import('node:os')).loadavg().map((x) => x.toFixed(1)).join(' ')}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack ?? e.message : String(e));
  process.exitCode = 1;
});
