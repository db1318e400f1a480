/**
 * `hotpatch status [--json] [--wait ID | --wait-gone ID [--timeout S]]`: every stored patch with
 * its metadata and the processes it is applied to, pending on or failed on (see src/agent/status).
 */
import type { Command } from 'commander';
import { HotpatchError, UsageError } from '../../errors.js';
import type { FleetStatus, StatusProcess } from '../../agent/index.js';
import { collect, parseTimeoutOption } from '../options.js';
import { printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';

interface StatusCliOptions {
  store?: string;
  trust: string[];
  statusFile?: string;
  wait?: string;
  waitGone?: string;
  timeout: string;
  json?: boolean;
}

function line(p: StatusProcess): string {
  return `    pid ${p.pid} ${p.exe}: ${p.state}${p.reason ? `: ${p.reason}` : ''}${p.code ? ` [${p.code}]` : ''}${p.attempts ? ` (${p.attempts} attempts, next ${p.nextRetryAt})` : ''}`;
}

function human(s: FleetStatus): string {
  const out: string[] = [`store ${s.store}; agent ${s.agent ? `pid ${s.agent.pid}, updated ${s.agent.updatedAt}` : 'not running'}`];
  if (s.patches.length === 0) out.push('no stored patches');
  for (const p of s.patches) {
    const meta = [p.severity, ...p.cves].filter((x) => x).join(' ');
    out.push(`${p.id}  ${p.target.name} (build-id ${p.target.buildId})${meta ? `  ${meta}` : ''}  signer ${p.signer ?? '(none)'}`);
    if (p.description) out.push(`  ${p.description}`);
    out.push(`  applied ${p.counts.applied}, pending ${p.counts.pending}, failed ${p.counts.failed}, not applied ${p.counts.notApplied}`);
    for (const x of p.processes) out.push(line(x));
  }
  for (const w of s.withdrawn) {
    out.push(`${w.id}  withdrawn ${w.withdrawnAt}: still in ${w.processes.length} process(es)`);
    for (const x of w.processes) out.push(line(x));
  }
  for (const b of s.invalid) out.push(`invalid store file ${b.file}: ${b.reason} [${b.code}]`);
  return out.join('\n');
}

/** Whether the wait condition holds; throws STATUS_PATCH_FAILED when a process failed for good. */
function waitDone(s: FleetStatus, opts: StatusCliOptions): boolean {
  if (opts.wait) {
    const p = s.patches.find((x) => x.id === opts.wait);
    if (!p) throw new HotpatchError('STORE_NOT_FOUND', `patch ${opts.wait} is not in the store ${s.store}`);
    const failed = p.processes.find((x) => x.state === 'failed');
    if (failed) throw new HotpatchError('STATUS_PATCH_FAILED', `patch ${p.id} failed on process ${failed.pid}: ${failed.reason ?? ''} [${failed.code ?? ''}]`);
    return s.agent !== null && p.counts.applied === p.processes.length;
  }
  const w = s.withdrawn.find((x) => x.id === opts.waitGone);
  const stillStored = s.patches.find((x) => x.id === opts.waitGone);
  if (stillStored) throw new HotpatchError('STATUS_NOT_WITHDRAWN', `patch ${opts.waitGone} is still in the store: run hotpatch store remove ${opts.waitGone} first`);
  return !w || w.processes.length === 0;
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('status')
    .description('every stored patch: metadata, and the processes it is applied to, pending on or failed on (with the reason)')
    .option('--store <DIR>', 'store directory (default: $HOTPATCH_STORE, else /var/lib/hotpatch/store)')
    .option('--trust <PUBFILE>', 'trusted public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)', collect, [] as string[])
    .option('--status-file <PATH>', 'the running agent\'s status file (default $HOTPATCH_AGENT_STATUS, else /run/hotpatch/agent-status.json)')
    .option('--wait <ID>', 'wait until the agent runs and patch ID is applied to every process that maps its target (exit 1 on failure or timeout)')
    .option('--wait-gone <ID>', 'wait until withdrawn patch ID is in no process any more')
    .option('--timeout <S>', 'how long --wait / --wait-gone wait (seconds)', '60')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch status\n  hotpatch status --wait 0123456789abcdef --timeout 120 --json\n')
    .action(async (opts: StatusCliOptions) => {
      const { computeStatus } = await import('../../agent/index.js');
      if (opts.wait && opts.waitGone) throw new UsageError('USAGE', 'give either --wait or --wait-gone, not both');
      const o = { ...(opts.store ? { dir: opts.store } : {}), trustFiles: opts.trust, ...(opts.statusFile ? { statusFile: opts.statusFile } : {}) };
      let s = computeStatus(o);
      if (opts.wait || opts.waitGone) {
        const deadline = Date.now() + parseTimeoutOption(opts.timeout);
        while (!waitDone(s, opts)) {
          if (Date.now() >= deadline) {
            if (opts.json) printJson(s);
            throw new HotpatchError('STATUS_WAIT_TIMEOUT', `timed out after ${opts.timeout} s: ${opts.wait ? `patch ${opts.wait} is not applied everywhere${s.agent ? '' : ' (no agent is running)'}` : `patch ${opts.waitGone} is still in some process`}`);
          }
          await new Promise((r) => setTimeout(r, 200));
          s = computeStatus(o);
        }
        progress(opts.wait ? `patch ${opts.wait} is applied to every matching process` : `patch ${opts.waitGone} is in no process`);
      }
      if (opts.json) printJson(s);
      else say(false, human(s));
    });
}
