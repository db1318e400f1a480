/**
 * `hotpatch apply PKG (--pid PID | --all) [--cold]`: apply a patch package to running processes
 * (and install the fixed file on disk). Thin: the work is in the library (src/patch/updater).
 */
import type { Command } from 'commander';
import { HotpatchError, RefusedError, UsageError } from '../../errors.js';
import type { ApplyReport, ProcessResult, RunOutcome } from '../../patch/updater/index.js';
import { parsePidOption, parseTimeoutOption, parseConcurrencyOption, collect } from '../options.js';
import { EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_REFUSED } from '../exit-codes.js';
import { printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';
import { yieldTimeSlices } from '../priority.js';

/** JSON result entry (cli.md: `{"pid","status","patchId","pauseMicros","reason"?}` plus extra fields). */
export function resultJson(pid: number, patchId: string, status: string, pauseMicros: number, extra: Record<string, unknown> = {}, reason?: string): Record<string, unknown> {
  return { pid, status, patchId, pauseMicros, ...(reason !== undefined ? { reason } : {}), ...extra };
}

/** Exit code of a run: ok 0, error 1, refused (nothing changed) 3, partial 4. */
export function exitCodeOf(outcome: RunOutcome): number {
  return outcome === 'ok' ? EXIT_OK : outcome === 'refused' ? EXIT_REFUSED : outcome === 'partial' ? EXIT_PARTIAL : EXIT_ERROR;
}

/**
 * Runs a library call for the CLI. With --json, an error that stops the whole command (usage,
 * signature policy, cold check) still prints one JSON document `{"results":[],"error":{code,message}}`
 * before the top-level handler reports it and maps it to the exit code.
 */
export async function runCommand<T>(json: boolean, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    if (json && e instanceof HotpatchError) printJson({ results: [], error: { code: e.code, message: e.message, refused: e instanceof RefusedError } });
    throw e;
  }
}

/** Prints per-process results: JSON as given, else one line each and a summary with what to do next. */
export async function printResults(json: boolean, doc: Record<string, unknown> & { results: ProcessResult[] }, outcome: RunOutcome, hint: string): Promise<void> {
  const { describe } = await import('../../patch/updater/index.js');
  if (json) {
    printJson(doc);
  } else {
    for (const r of doc.results) say(false, describe(r));
    const counts = new Map<string, number>();
    for (const r of doc.results) counts.set(r.status, (counts.get(r.status) ?? 0) + 1);
    if (doc.results.length > 1) say(false, [...counts].map(([s, n]) => `${n} ${s}`).join(', '));
  }
  if (outcome !== 'partial' && outcome !== 'error' && outcome !== 'refused') return;
  const bad = doc.results.filter((r) => r.status === 'refused' || r.status === 'failed');
  // Retrying cannot help a process that does not exist: say so instead of the generic hint.
  if (bad.length > 0 && bad.every((r) => r.code === 'PROCESS_NOT_FOUND')) {
    progress(`hotpatch: no such process: ${bad.map((r) => r.pid).join(', ')} (check the pid; \`hotpatch list\` shows patched processes)`);
    return;
  }
  // Only a busy thread, a lock or a freeze that timed out can go away by trying again.
  const retryable = bad.some((r) => r.code === undefined || TRANSIENT_CODES.has(r.code));
  if (retryable) progress(`hotpatch: some processes were not changed (see the reasons above); ${hint}`);
  else if (bad.length > 0) progress('hotpatch: some processes were not changed (see the reasons above); running the same command again will not change that');
}

/** Result codes that running the same command again can clear. */
const TRANSIENT_CODES = new Set(['TARGET_BUSY', 'PROCESS_FREEZE_TIMEOUT', 'PROCESS_LOCKED', 'IN_PROGRESS', 'PROCESS_REMOTE_SYSCALL_FAILED', 'INTERNAL']);

function summary(report: ApplyReport, all: boolean): string {
  if (report.results.length === 0 && all) return `no process maps ${report.package.target.name} (build-id ${report.package.target.buildId}); nothing to patch`;
  return '';
}

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('apply')
    .description('apply a patch package to running processes (hotpatch-ready functions without stopping a thread, others in one short freeze) and, with --cold, install the fixed file on disk')
    .argument('<PKG>', 'the .hpk package')
    .option('--pid <PID>', 'a process to patch (repeatable)', collect, [] as string[])
    .option('--all', 'every process that maps the target image (matched by build-id, whatever path, deleted or not)')
    .option('--cold', "also install the package's fixed file on disk (atomically; the original is kept beside it)")
    .option('--file <PATH>', 'with --cold: the file to replace (repeatable; default: the path each found process loaded the target from)', collect, [] as string[])
    .option('--trust <PUBFILE>', 'trusted public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)', collect, [] as string[])
    .option('--allow-unsigned', 'accept a package without a trusted signature (never one whose signature does not match)')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--lock-wait <SECONDS>', 'how long to wait while another hotpatch command works on a process', '10')
    .option('--concurrency <N>', 'processes worked on at once with --all', '4')
    .option('--dry-run', 'check everything (build-id, site bytes, symbols, relocation, cold file) and change nothing')
    .option('--freeze', 'switch in a short freeze of every thread even where hotpatch-ready entries allow a switch that stops none')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText(
      'after',
      `
Signature policy: the package must be signed by a trusted key: --trust PUBFILE (repeatable), else the
files in HOTPATCH_TRUSTED_KEYS (colon-separated), else /etc/hotpatch/trusted.d/*.pub. An unsigned or
untrusted package is refused (exit 3) unless --allow-unsigned. The signer is recorded in each process.

--cold replaces, for each distinct path the found processes loaded the target from (or each --file),
the file on disk by the fixed build, only if it holds the target build. The original stays beside it
as .NAME.hotpatch-PATCHID.orig (with .NAME.hotpatch-PATCHID.json); \`hotpatch remove PATCHID --cold\`
puts it back. Processes started afterwards run the fixed build and are skipped by later --all runs.

Exit codes: 0 ok, 1 error, 2 usage, 3 refused (nothing changed), 4 partial (some processes not patched).

Examples:
  hotpatch apply fix.hpk --pid 1234
  hotpatch apply fix.hpk --all --trust /etc/hotpatch/release.pub
  hotpatch apply fix.hpk --all --cold --json
  hotpatch apply fix.hpk --all --dry-run --allow-unsigned
`,
    )
    .action(async (file: string, opts: {
      pid: string[]; all?: boolean; cold?: boolean; file: string[]; trust: string[]; allowUnsigned?: boolean;
      timeout: string; lockWait: string; concurrency: string; dryRun?: boolean; freeze?: boolean; json?: boolean;
    }) => {
      const json = opts.json ?? false;
      const { applyPackageFile } = await import('../../patch/updater/index.js');
      await yieldTimeSlices();
      const report = await runCommand(json, async () => {
        const pids = opts.pid.map(parsePidOption);
        if (opts.file.length > 0 && !opts.cold) throw new UsageError('USAGE', '--file only makes sense with --cold');
        return applyPackageFile(file, {
          pids, all: opts.all === true, cold: opts.cold === true, coldFiles: opts.file,
          trustFiles: opts.trust, allowUnsigned: opts.allowUnsigned === true,
          timeoutMs: parseTimeoutOption(opts.timeout), lockWaitMs: parseTimeoutOption(opts.lockWait, '--lock-wait'),
          concurrency: parseConcurrencyOption(opts.concurrency), dryRun: opts.dryRun === true, freeze: opts.freeze === true,
          onProgress: progress,
        });
      });
      for (const n of report.notes) progress(`note: ${n}`);
      const s = summary(report, opts.all === true);
      if (s) progress(s);
      await printResults(json, { package: report.package, results: report.results, cold: report.cold, notes: report.notes }, report.outcome,
        'fix the cause and run the same command again (patched processes report already-patched)');
      if (!json) for (const c of report.cold) say(false, `cold: ${c.path}: ${c.status}${c.status === 'installed' ? ` (original kept as ${c.backupPath}; roll back with \`hotpatch remove ${report.package.id} --cold --file ${c.path}\`)` : ''}`);
      setExitCode(exitCodeOf(report.outcome));
    });
}
