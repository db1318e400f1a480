/**
 * `hotpatch demo`: the whole system on a real program, in about ten seconds. It builds a small
 * multi-threaded HTTP service with a memory-leak bug and its fix, runs it under load, shows the bug
 * from a client's side, builds and signs a patch, applies it live, removes and re-applies it, installs
 * the cold patch, then plays an attacker who hooks the patched function and shows the guard finding and
 * restoring it. Every step runs the real `hotpatch` command, prints what it does and what it measured.
 */
import { mkdtempSync, openSync, closeSync, writeSync, rmSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { spawn } from 'node:child_process';
import { HotpatchError } from '../errors.js';
import { listPatches } from '../patch/engine/index.js';
import { LoadProcess } from '../load/load-process.js';
import type { LoadStats } from '../load/load-generator.js';
import { buildDemoService } from './sample.js';
import { runHotpatch, type CliRun } from './cli-runner.js';
import { EXPLOIT_PATH, probe, startService, stopService, type RunningService } from './service.js';

export interface DemoOptions {
  /** Print JSON at the end instead of human text on stdout (progress still goes to stderr). */
  json?: boolean;
  /** Keep the work directory (binaries, keys, package) for inspection. */
  keep?: boolean;
  /** Worker threads of the service (default 8) and load connections (default 4, must be < workers). */
  workers?: number;
  connections?: number;
}

export interface DemoStep {
  title: string;
  ok: boolean;
  figures: Record<string, number | string | boolean>;
}

export interface DemoReport {
  ok: boolean;
  workDir: string;
  steps: DemoStep[];
}

type Say = (line: string) => void;

/** Formats a shell command for an 80-column terminal: long lines continue with a backslash. */
export function wrapCommand(words: string[], width = 78): string[] {
  const lines: string[] = [];
  let line = '  $';
  for (const w of words) {
    if (line.length + 1 + w.length > width - 2 && line.trim() !== '$') {
      lines.push(`${line} \\`);
      line = '     ';
    }
    line += ` ${w}`;
  }
  lines.push(line);
  return lines;
}

/** Thrown when a demo step does not show what it should; the demo stops and cleans up. */
export class DemoFailure extends HotpatchError {}

export async function runDemo(options: DemoOptions = {}): Promise<DemoReport> {
  const out: Say = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const workers = options.workers ?? 8;
  const connections = options.connections ?? 4;
  const workDir = mkdtempSync(join(tmpdir(), 'hotpatch-demo-'));
  const report: DemoReport = { ok: false, workDir, steps: [] };
  const services: RunningService[] = [];
  let load: LoadProcess | undefined;
  let guard: ReturnType<typeof spawn> | undefined;
  const cleanup = () => {
    load?.kill();
    guard?.kill('SIGKILL');
    for (const s of services) stopService(s);
    if (!options.keep) rmSync(workDir, { recursive: true, force: true });
  };
  const onSignal = () => {
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  let stepNo = 0;
  const TOTAL = 8;
  const step = async (title: string, body: (figures: DemoStep['figures']) => Promise<void>) => {
    stepNo++;
    out(`\n[${stepNo}/${TOTAL}] ${title}`);
    const figures: DemoStep['figures'] = {};
    const s: DemoStep = { title, ok: false, figures };
    report.steps.push(s);
    await body(figures);
    s.ok = true;
  };
  const hp = async (args: string[], expectCode = 0): Promise<CliRun> => {
    for (const l of wrapCommand(['hotpatch', ...args])) out(l);
    const r = await runHotpatch(args, workDir);
    if (r.code !== expectCode) {
      throw new DemoFailure('DEMO_STEP_FAILED', `hotpatch ${args[0]} exited with ${r.code} (expected ${expectCode}): ${r.stderr.trim()}`);
    }
    return r;
  };
  const showProbe = async (port: number, expectLeak: boolean) => {
    const p = await probe(port);
    out(`  client: GET ${EXPLOIT_PATH} (96 bytes of a 5-byte message)`);
    out(`  answer: ${p.length} bytes ${JSON.stringify(p.printable.slice(0, 56))}`);
    out(p.leaked ? '  -> the session token leaked to the client' : '  -> only the message comes back: no leak');
    if (p.leaked !== expectLeak) {
      throw new DemoFailure('DEMO_UNEXPECTED_BEHAVIOUR', expectLeak ? 'the bug did not show' : 'the service still leaks');
    }
    return p;
  };
  const loadLine = (s: LoadStats) =>
    `  load: ${s.requests} requests in ${s.seconds.toFixed(1)} s, ${s.failures} failed, p50 ${s.p50Micros} µs, p99 ${s.p99Micros} µs`;

  try {
    let builds!: Awaited<ReturnType<typeof buildDemoService>>;
    let service!: RunningService;
    const pkg = 'fix.hpk';
    const key = 'demo.key';
    let patchId = '';

    await step('Build the service and its fix (same compiler, same flags)', async (f) => {
      const t0 = Date.now();
      builds = await buildDemoService(workDir);
      for (const c of builds.commands) for (const l of wrapCommand(c)) out(l);
      f.buildMillis = Date.now() - t0;
    });

    await step(`Start the service (${workers} worker threads) under load (${connections} connections)`, async (f) => {
      service = await startService(builds.old, workers);
      services.push(service);
      load = await LoadProcess.start({ port: service.port, connections, path: '/echo?msg=hello&len=5', expectBody: 'hello' });
      await new Promise((r) => setTimeout(r, 1000));
      const s = await load.stats();
      out(`  service pid ${service.pid} on 127.0.0.1:${service.port}`);
      out(loadLine(s));
      f.pid = service.pid;
      f.requests = s.requests;
      f.failures = s.failures;
      f.p50Micros = s.p50Micros;
      f.p99Micros = s.p99Micros;
      await showProbe(service.port, true);
    });

    await step('Build and sign the patch from the two builds', async (f) => {
      await hp(['keygen', '-o', key]);
      const built = await hp(['build', '--old', basename(builds.old), '--new', basename(builds.fixed), '-o', pkg, '--key', key, '--cold']);
      const inspected = (await hp(['inspect', pkg, '--trust', `${key}.pub`])).json as {
        id: string;
        functions: Array<{ name: string; size: number }>;
      };
      patchId = inspected.id;
      out(`  patch ${patchId}: ${inspected.functions.map((fn) => fn.name).join(', ')} (built in ${built.millis} ms)`);
      f.patchId = patchId;
      f.functions = inspected.functions.length;
    });

    await step('Apply the patch live, under load', async (f) => {
      await load!.stats();
      const r = (await hp(['apply', pkg, '--pid', String(service.pid), '--trust', `${key}.pub`])).json as {
        results: Array<{ status: string; pauseMicros: number; protocol?: 'live' | 'freeze' }>;
      };
      const res = r.results[0]!;
      out(res.protocol === 'live'
        ? `  ${res.status}: switched live, no thread of the service was stopped`
        : `  ${res.status}: the service was paused for ${Math.round(res.pauseMicros)} µs`);
      f.pauseMicros = Math.round(res.pauseMicros);
      f.protocol = res.protocol ?? 'freeze';
      await showProbe(service.port, false);
      const s = await load!.stats();
      out(loadLine(s));
      f.requests = s.requests;
      f.failures = s.failures;
      if (s.failures) throw new DemoFailure('DEMO_FAILED_REQUESTS', `${s.failures} requests failed while patching: ${s.errors.join('; ')}`);
    });

    await step('Remove the patch at run time, then apply it again', async (f) => {
      const removed = (await hp(['remove', patchId, '--pid', String(service.pid)])).json as { results: Array<{ pauseMicros: number }> };
      f.removePauseMicros = Math.round(removed.results[0]!.pauseMicros);
      await showProbe(service.port, true);
      const again = (await hp(['apply', pkg, '--pid', String(service.pid), '--trust', `${key}.pub`])).json as {
        results: Array<{ pauseMicros: number }>;
      };
      f.reapplyPauseMicros = Math.round(again.results[0]!.pauseMicros);
      await showProbe(service.port, false);
      const s = await load!.stats();
      out(loadLine(s));
      f.failures = s.failures;
      if (s.failures) throw new DemoFailure('DEMO_FAILED_REQUESTS', `${s.failures} requests failed: ${s.errors.join('; ')}`);
    });

    await step('Install the cold patch: new processes start fixed', async (f) => {
      // The cold patch replaces the file on disk; the demo installs a copy so the build stays intact.
      const installed = 'echo-service.installed';
      copyFileSync(builds.old, join(workDir, installed));
      await hp(['apply', pkg, '--cold', '--file', installed, '--trust', `${key}.pub`]);
      const fresh = await startService(join(workDir, installed), 2);
      services.push(fresh);
      const listed = (await hp(['list', '--pid', String(fresh.pid)])).json as { processes: Array<{ patches: unknown[] }> };
      const hot = listed.processes.reduce((n, p) => n + p.patches.length, 0);
      out(`  new process ${fresh.pid} runs the fixed file with ${hot} hot patches`);
      if (hot !== 0) throw new DemoFailure('DEMO_UNEXPECTED_BEHAVIOUR', 'the cold-started process carries a hot patch');
      await showProbe(fresh.port, false);
      f.pid = fresh.pid;
    });

    await step('An attacker hooks the patched function; the guard restores it', async (f) => {
      const site = listPatches(service.pid).record!.patches.flatMap((p) => p.sites).find((s) => s.state === 'applied')!;
      // What an attacker with ptrace rights does: aim the patch's jump back at the old, leaking
      // code (just past the entry's 2-byte switch), or for a 5-byte site, put the old bytes back.
      const hook =
        site.kind === 'padded'
          ? Uint8Array.of(0xe9, ...new Uint8Array(Int32Array.of(Number(site.switchAddress + 2n - (site.address + 5n))).buffer))
          : site.original;
      const fd = openSync(`/proc/${service.pid}/mem`, 'r+');
      try {
        writeSync(fd, hook, 0, hook.length, Number(site.address));
      } finally {
        closeSync(fd);
      }
      out(`  attacker wrote ${hook.length} bytes at ${site.function} (0x${site.address.toString(16)}):`);
      out(`  the jump now leads back into the old code`);
      await showProbe(service.port, true);
      const verified = (await hp(['verify', '--pid', String(service.pid), '--trust', `${key}.pub`], 5)).json as {
        findings: Array<{ code: number; structure: string; symbol: string; severity: string; destination?: string }>;
      };
      for (const x of verified.findings.slice(0, 3)) {
        out(`  finding: [${x.code}] ${x.structure}, ${x.symbol} (${x.severity})`);
        if (x.destination) out(`           jumps to ${x.destination.replace(/^.*\//, '')}`);
      }
      f.findings = verified.findings.length;
      const t0 = Date.now();
      await guardRestore(service.pid, `${key}.pub`, workDir, out, (g) => (guard = g));
      f.restoreMillis = Date.now() - t0;
      await showProbe(service.port, false);
    });

    await step('Clean up', async (f) => {
      const s = await load!.stop();
      load = undefined;
      out(loadLine(s));
      f.failures = s.failures;
      if (s.failures) throw new DemoFailure('DEMO_FAILED_REQUESTS', `${s.failures} requests failed: ${s.errors.join('; ')}`);
      out(options.keep ? `  work directory kept: ${workDir}` : '  stopped the services, removed the work directory');
    });
    report.ok = true;
    out('\nDemo complete: the bug was fixed live, removed, fixed again, cold-patched\nand guarded, with zero failed requests.');
    return report;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanup();
  }
}

/** Runs `hotpatch guard --pid PID --action restore` until it reports a restore (at most 20 s). */
function guardRestore(pid: number, trust: string, cwd: string, out: Say, track: (g: ReturnType<typeof spawn>) => void): Promise<void> {
  const args = ['guard', '--pid', String(pid), '--action', 'restore', '--interval', '0.5', '--trust', trust, '--state-dir', 'guard-state'];
  for (const l of wrapCommand(['hotpatch', ...args])) out(l);
  const cli = new URL('../cli/main.js', import.meta.url).pathname;
  const g = spawn(process.execPath, [cli, ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], cwd });
  track(g);
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      g.kill('SIGKILL');
      reject(new DemoFailure('DEMO_GUARD_TIMEOUT', 'the guard did not restore the code within 20 s'));
    }, 20_000);
    g.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (const line of buf.split('\n').slice(0, -1)) {
        const event = JSON.parse(line) as { type?: string; outcome?: { performed?: string; ok?: boolean } };
        if (event.type === 'finding' && event.outcome?.performed === 'restore' && event.outcome.ok === true) {
          clearTimeout(timer);
          out('  guard: finding re-checked, expected bytes written back');
          g.kill('SIGTERM');
          resolve();
        }
      }
      buf = buf.slice(buf.lastIndexOf('\n') + 1);
    });
    g.once('exit', (code) => {
      clearTimeout(timer);
      reject(new DemoFailure('DEMO_GUARD_EXITED', `the guard exited (${code}) before restoring`));
    });
  });
}
