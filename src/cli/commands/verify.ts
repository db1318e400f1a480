/**
 * `hotpatch verify (--pid PID | --all) [--trust PUBFILE]... [--policy FILE] [--json]`: one full
 * check of every protected structure. Exit code 5 when there are findings, 0 when clean.
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
// Light modules only at start-up: the checks (x86 decoder, FFI) are loaded by the action.
import { ALL_STRUCTURES, findingToJson, formatFinding, SEVERITIES, severityRank, type Severity, type StructureCode } from '../../guard/finding.js';
import { DEFAULT_STATE_DIR } from '../../guard/defaults.js';
import { EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, EXIT_PARTIAL } from '../exit-codes.js';
import { liveStatus, printJson, progress, say } from '../output.js';
import { collect, parsePidOption, parseTimeoutOption } from '../options.js';
import type { SetExitCode } from './index.js';

/** Parses --fail-on SEVERITY. */
export function parseSeverityOption(text: string): Severity {
  if (!(SEVERITIES as readonly string[]).includes(text)) throw new UsageError('USAGE_BAD_SEVERITY', `--fail-on: "${text}" is not a severity (${SEVERITIES.join(', ')})`);
  return text as Severity;
}

/** Parses --structures "0,1,3". */
export function parseStructures(text: string): StructureCode[] {
  const out: StructureCode[] = [];
  for (const part of text.split(',')) {
    const n = /^\d+$/.test(part.trim()) ? Number(part.trim()) : NaN;
    if (!(ALL_STRUCTURES as readonly number[]).includes(n)) throw new UsageError('USAGE_BAD_STRUCTURE', `--structures: "${part}" is not a structure code 0-10`);
    out.push(n as StructureCode);
  }
  return out;
}

interface VerifyCliOptions {
  pid: string[];
  all?: boolean;
  trust: string[];
  policy?: string;
  json?: boolean;
  stateDir?: string;
  structures?: string;
  failOn?: string;
  ptrace: boolean;
  timeout: string;
}

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('verify')
    .description('check running processes for tampering: code, data, import/export tables, injected code, hidden modules, signal handlers, credentials, vDSO, sanctioned patches')
    .option('--pid <PID>', 'process to check (repeatable)', collect, [])
    .option('--all', 'check every process')
    .option('--trust <PUBFILE>', 'trusted patch signer public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)', collect, [])
    .option('--policy <FILE>', 'guard policy file (JSON, see docs/guard.md)')
    .option('--state-dir <DIR>', `guard state to compare with (first-seen file identities, credential baselines; default ${DEFAULT_STATE_DIR} when it exists)`)
    .option('--structures <LIST>', 'only these structure codes, comma-separated (default: all 0-10)')
    .option('--fail-on <SEVERITY>', `exit 5 only for a finding of at least this severity: ${SEVERITIES.join(', ')} (default: the policy's failOn, high)`)
    .option('--no-ptrace', 'skip structure 7 (signal handlers), the only check that briefly stops the target')
    .option('--timeout <SECONDS>', 'how long a target may take to stop for structure 7, and an injected call to return', '2')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExit codes: 0 clean (or only findings below --fail-on), 5 findings, 1 error (no named process could be checked), 4 some named processes could not be checked, 2 usage.\n\nExamples:\n  hotpatch verify --pid 1234\n  hotpatch verify --all --json\n')
    .action(async (opts: VerifyCliOptions) => {
      const json = opts.json ?? false;
      const { allProcessIds, verifyProcesses } = await import('../../guard/verify.js');
      const { defaultPolicy, loadPolicy } = await import('../../guard/policy.js');
      const { GuardState } = await import('../../guard/state.js');
      if ((opts.pid.length > 0) === (opts.all === true)) throw new UsageError('USAGE_PID_OR_ALL', 'give --pid PID (repeatable) or --all');
      const pids = opts.all ? allProcessIds() : opts.pid.map(parsePidOption);
      const policy = opts.policy !== undefined ? loadPolicy(opts.policy) : defaultPolicy();
      const failOn = opts.failOn !== undefined ? parseSeverityOption(opts.failOn) : policy.failOn;
      const stateDir = opts.stateDir ?? (existsSync(DEFAULT_STATE_DIR) ? DEFAULT_STATE_DIR : null);
      const state = new GuardState(stateDir, false);
      const structures = opts.structures !== undefined ? parseStructures(opts.structures) : [...ALL_STRUCTURES];
      const status = liveStatus(json);
      const results = await verifyProcesses(pids, {
        policy, state, trustFiles: opts.trust, structures, allowPtrace: opts.ptrace, freezeTimeoutMs: parseTimeoutOption(opts.timeout),
        onProgress: (done, total, b) => status.update(`hotpatch verify: ${done}/${total} processes, ${(b / 1e6).toFixed(1)} MB compared`),
      });
      status.done();
      const findings = results.flatMap((r) => r.findings);
      const checked = results.filter((r) => r.checked);
      if (!opts.all) {
        for (const r of results) if (!r.checked) progress(`hotpatch: process ${r.pid} not checked: ${r.error ?? 'unknown reason'}`);
      }
      const bytes = checked.reduce((a, r) => a + r.bytes, 0);
      if (json) {
        printJson({
          checked: { processes: checked.length, bytes },
          failOn,
          findings: findings.map(findingToJson),
          // Kernel threads and processes that exited meanwhile are not worth listing for --all.
          skipped: results.filter((r) => !r.checked && !(opts.all && /kernel thread|exited|does not exist/.test(r.error ?? ''))).map((r) => ({ pid: r.pid, reason: r.error ?? '' })),
        });
      } else {
        for (const f of findings) say(false, formatFinding(f));
        const below = findings.filter((f) => severityRank(f.severity) < severityRank(failOn)).length;
        say(false, `${checked.length} process(es) checked, ${bytes} bytes compared, ${findings.length} finding(s)${below > 0 ? ` (${below} below --fail-on ${failOn})` : ''}`);
      }
      // Findings first; else a named process that could not be checked is an error (1), or a
      // partial result (4) when others were checked.
      const unchecked = !opts.all && results.some((r) => !r.checked);
      const failing = findings.some((f) => severityRank(f.severity) >= severityRank(failOn));
      setExitCode(failing ? EXIT_FINDINGS : unchecked ? (checked.length > 0 ? EXIT_PARTIAL : EXIT_ERROR) : EXIT_OK);
    });
}
