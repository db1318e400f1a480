/**
 * `hotpatch guard (--pid PID... | --all | --exe PATH...) [--interval S] [--action log|stop|kill|restore]
 *  [--policy FILE] [--metrics PORT] [--json-log FILE] [--state-dir DIR]`: the long-running guard.
 * Findings go out as JSON lines (stdout, or --json-log FILE) and as human lines on stderr.
 */
import type { Server } from 'node:http';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
// Light modules only at start-up: the guard itself (checks, x86 decoder, FFI) is loaded by the action.
import type { GuardEvent } from '../../guard/guard.js';
import { findingToJson } from '../../guard/finding.js';
import { DEFAULT_INTERVAL_MS, DEFAULT_STATE_DIR, GUARD_ACTIONS, type GuardAction } from '../../guard/defaults.js';
import { levelOfSeverity, type LogLevel } from '../../guard/log.js';
import { collect, parsePidOption, parseTimeoutOption } from '../options.js';
import { liveStatus } from '../output.js';
import type { SetExitCode } from './index.js';
import { parseStructures } from './verify.js';

interface GuardCliOptions {
  pid: string[];
  all?: boolean;
  exe: string[];
  interval: string;
  fullInterval?: string;
  signalInterval?: string;
  action?: string;
  policy?: string;
  metrics?: string;
  jsonLog?: string;
  stateDir: string;
  trust: string[];
  structures?: string;
  ptrace: boolean;
  timeout: string;
  duration?: string;
}

function seconds(text: string, option: string, min: number): number {
  const s = Number(text);
  if (!Number.isFinite(s) || s < min || s > 86_400) throw new UsageError('USAGE_BAD_INTERVAL', `${option} ${text} is not a number of seconds between ${min} and 86400`);
  return Math.round(s * 1000);
}

/** The level of an event's JSON line: a finding's from its severity, errors `err`, the rest `info`. */
export function eventLevel(e: GuardEvent): LogLevel {
  if (e.type === 'finding') return e.outcome.ok ? levelOfSeverity(e.finding.severity) : 'err';
  return e.type === 'error' ? 'err' : 'info';
}

/** One JSON line per event (bigints and bytes as hex, findings in the `verify` shape), with its `level`. */
export function eventJson(e: GuardEvent): string {
  const level = eventLevel(e);
  if (e.type === 'finding') return JSON.stringify({ type: e.type, time: e.time, level, action: e.action, outcome: e.outcome, finding: findingToJson(e.finding) });
  const { type, time, ...rest } = e;
  return JSON.stringify({ type, time, level, ...rest });
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('guard')
    .description('protect running processes: verify their code and tables at random times and react to tampering')
    .option('--pid <PID>', 'process to protect (repeatable)', collect, [])
    .option('--all', 'protect every process, including ones that start later')
    .option('--exe <PATH|BUILDID>', 'protect processes of this executable (path or build-id; repeatable), including ones that start later', collect, [])
    .option('--interval <SECONDS>', 'cycle length: every structure of every process is checked at least once per 2 x interval', String(DEFAULT_INTERVAL_MS / 1000))
    .option('--full-interval <SECONDS>', 'longest time an unwritten (clean) mapping goes without a byte comparison (default 6 x interval)')
    .option('--signal-interval <SECONDS>', 'how often the cheap code-write signal (page tables of code mappings) is polled per process; a change triggers an immediate check (default 0.5; 0 disables)')
    .option('--action <ACTION>', `what to do on a confirmed finding: ${GUARD_ACTIONS.join(', ')} (default: the policy's, else log)`)
    .option('--policy <FILE>', 'guard policy file (JSON, see docs/guard.md)')
    .option('--metrics <PORT>', 'serve Prometheus metrics on http://127.0.0.1:PORT/metrics')
    .option('--json', 'findings and events as JSON lines on stdout (the default; human lines go to stderr)')
    .option('--json-log <FILE>', 'append the JSON lines to FILE instead of stdout')
    .option('--state-dir <DIR>', 'where first-seen identities, credential baselines and restores are kept', DEFAULT_STATE_DIR)
    .option('--trust <PUBFILE>', 'trusted patch signer public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)', collect, [])
    .option('--structures <LIST>', 'only these structure codes, comma-separated (default: all 0-10)')
    .option('--no-ptrace', 'skip structure 7 (signal handlers), the only check that briefly stops the target')
    .option('--timeout <SECONDS>', 'how long a target may take to stop for structure 7 (and a restore), and an injected call to return', '2')
    .option('--duration <SECONDS>', 'stop after this long (default: run until SIGTERM/SIGINT; SIGHUP reloads the policy)')
    .addHelpText('after', '\nExamples:\n  hotpatch guard --exe /usr/sbin/nginx --action restore --metrics 9464\n  hotpatch guard --all --policy /etc/hotpatch/guard.json \\\n    --json-log /var/log/hotpatch-guard.jsonl\n')
    .action(async (opts: GuardCliOptions) => {
      const { Guard } = await import('../../guard/guard.js');
      const { defaultPolicy, loadPolicy } = await import('../../guard/policy.js');
      const { GuardState } = await import('../../guard/state.js');
      const { GuardMetrics, serveMetrics } = await import('../../guard/metrics.js');
      const { journalLine, stderrIsJournal } = await import('../../guard/log.js');
      const { appendPrivateFile } = await import('../../fs/index.js');
      const selections = [opts.pid.length > 0, opts.all === true, opts.exe.length > 0].filter(Boolean).length;
      if (selections > 1) throw new UsageError('USAGE_SELECTION', 'give only one of --pid, --all, --exe');
      const policy = opts.policy !== undefined ? loadPolicy(opts.policy) : defaultPolicy();
      if (selections === 0 && policy.protect.length === 0) throw new UsageError('USAGE_SELECTION', 'say what to protect: --pid PID, --all, --exe PATH, or a policy with "protect"');
      if (opts.action !== undefined && !(GUARD_ACTIONS as readonly string[]).includes(opts.action)) throw new UsageError('USAGE_BAD_ACTION', `--action must be one of ${GUARD_ACTIONS.join(', ')}`);
      const intervalMs = seconds(opts.interval, '--interval', 0.05);
      const metrics = new GuardMetrics();
      // On a terminal, the first cycle (the one that compares every byte) shows its progress.
      const status = liveStatus(false);
      let firstCycleOver = false;
      // Human lines on stderr; under systemd with stderr on the journal, with sd-daemon priorities.
      const journal = stderrIsJournal();
      const log = (line: string, level: LogLevel = 'info') => {
        status.done();
        process.stderr.write(`${journalLine(level, line, journal)}\n`);
      };
      // The JSON log is opened for every line (O_APPEND, safety checks of fs/safe-write.ts): a log
      // renamed away by logrotate is re-created by the next line, and SIGHUP only reloads the policy.
      const writeJson = (line: string) => {
        try {
          if (opts.jsonLog !== undefined) appendPrivateFile(opts.jsonLog, `${line}\n`, 'guard JSON log');
          else process.stdout.write(`${line}\n`);
        } catch (e) {
          metrics.countError('log');
          log(`guard: cannot write the JSON log: ${e instanceof Error ? e.message : String(e)}`, 'err');
        }
      };
      const guard = new Guard({
        pids: opts.pid.map(parsePidOption),
        all: opts.all === true,
        exe: opts.exe,
        intervalMs,
        ...(opts.fullInterval !== undefined ? { fullIntervalMs: seconds(opts.fullInterval, '--full-interval', 0) } : {}),
        ...(opts.signalInterval !== undefined ? { signalIntervalMs: seconds(opts.signalInterval, '--signal-interval', 0) } : {}),
        ...(opts.action !== undefined ? { action: opts.action as GuardAction } : {}),
        policy,
        state: new GuardState(opts.stateDir, true),
        trustFiles: opts.trust,
        allowPtrace: opts.ptrace,
        freezeTimeoutMs: parseTimeoutOption(opts.timeout),
        ...(opts.structures !== undefined ? { structures: parseStructures(opts.structures) } : {}),
        metrics,
        onEvent: (e) => {
          if (e.type === 'cycle' && !firstCycleOver) {
            firstCycleOver = true;
            status.done();
          }
          if (e.type !== 'cycle' || opts.jsonLog !== undefined) writeJson(eventJson(e));
        },
        onCheck: (done, total, processes) => firstCycleOver || status.update(`hotpatch guard: first cycle: ${done}/${total} checks, ${processes} processes, ${(metrics.bytesVerifiedTotal / 1e6).toFixed(1)} MB compared`),
        log,
      });
      let server: Server | undefined;
      if (opts.metrics !== undefined) {
        const port = /^\d+$/.test(opts.metrics) ? Number(opts.metrics) : NaN;
        if (!(port > 0 && port < 65536)) throw new UsageError('USAGE_BAD_PORT', `--metrics ${opts.metrics} is not a TCP port`);
        server = await serveMetrics(metrics, port);
        log(`guard: metrics on http://127.0.0.1:${port}/metrics`);
      }
      log(`guard: interval ${intervalMs / 1000}s (every structure checked at least every ${(2 * intervalMs) / 1000}s), policy ${policy.source}`, 'notice');
      // SIGHUP: read the policy (and its trusted keys) again; a policy that does not load leaves
      // the running one in force (hotpatch_policy_last_reload_successful 0), the guard keeps going.
      const reload = () => {
        metrics.policyReloadsTotal++;
        const time = new Date().toISOString();
        if (opts.policy === undefined) {
          log('guard: SIGHUP: no --policy to reload; the JSON log is reopened for every line anyway', 'notice');
          writeJson(JSON.stringify({ type: 'reload', time, level: 'notice', ok: true, policy: null }));
          return;
        }
        try {
          guard.reloadPolicy(loadPolicy(opts.policy), opts.trust);
          metrics.policyLoadSuccess = 1;
          metrics.policyLoadTimestamp = Date.now() / 1000;
          log(`guard: SIGHUP: policy ${opts.policy} reloaded`, 'notice');
          writeJson(JSON.stringify({ type: 'reload', time, level: 'notice', ok: true, policy: opts.policy }));
        } catch (e) {
          metrics.countError('policy-reload');
          metrics.policyLoadSuccess = 0;
          const message = e instanceof Error ? e.message : String(e);
          log(`guard: SIGHUP: policy ${opts.policy} not reloaded, the previous one stays in force: ${message}`, 'err');
          writeJson(JSON.stringify({ type: 'reload', time, level: 'err', ok: false, policy: opts.policy, message }));
        }
      };
      process.on('SIGHUP', reload);
      guard.start();
      await new Promise<void>((res) => {
        const done = () => res();
        process.once('SIGTERM', done);
        process.once('SIGINT', done);
        if (opts.duration !== undefined) setTimeout(done, seconds(opts.duration, '--duration', 0)).unref();
      });
      process.off('SIGHUP', reload);
      await guard.stop();
      server?.close();
      log('guard: stopped', 'notice');
    });
}
