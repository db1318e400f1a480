/** `hotpatch list [--pid PID]`: the patches recorded in running processes, read from the targets alone. */
import type { Command } from 'commander';
import { HotpatchError } from '../../errors.js';
import type { ListedPatch, PatchMeta, ProcessPatches } from '../../patch/engine/list.js';
import { printJson, progress, say } from '../output.js';
import { parsePidOption } from '../options.js';
import type { SetExitCode } from './index.js';

type MetaOf = (p: ProcessPatches, x: ListedPatch) => PatchMeta | null;

function toJson(p: ProcessPatches, metaOf: MetaOf): unknown {
  return {
    pid: p.pid,
    exe: p.exe,
    patches: p.patches.map((x) => ({
      id: x.id, module: x.module, functions: x.functions, signer: x.signer, state: x.state, buildId: x.buildId, packageHash: x.packageHash,
      appliedAt: new Date(x.appliedAt).toISOString(), sites: x.sites,
      ...(metaOf(p, x) ?? { description: null, cves: [], severity: null }),
    })),
    transaction: p.transaction,
    disagreements: p.disagreements,
  };
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('list')
    .description('list the patches applied to a running process (or to every patched process)')
    .option('--pid <PID>', 'only this process')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch list\n  hotpatch list --pid 1234 --json\n')
    .action(async (opts: { pid?: string; json?: boolean }) => {
      // Direct import: the engine's index loads the x86 encoder and the FFI, which list does not need.
      const { findPatchedProcesses, listPatches, recordedMeta } = await import('../../patch/engine/list.js');
      const metaOf: MetaOf = (p, x) => {
        const recorded = p.record?.patches.find((r) => r.id === x.id);
        return recorded ? recordedMeta(recorded) : null;
      };
      const json = opts.json ?? false;
      const pids = opts.pid !== undefined ? [parsePidOption(opts.pid)] : findPatchedProcesses();
      const processes: ProcessPatches[] = [];
      for (const pid of pids) {
        try {
          processes.push(listPatches(pid));
        } catch (e) {
          if (opts.pid !== undefined || !(e instanceof HotpatchError)) throw e;
          progress(`hotpatch: process ${pid}: ${e.message}`);
        }
      }
      if (json) {
        printJson({ processes: processes.map((p) => toJson(p, metaOf)) });
        return;
      }
      if (processes.every((p) => p.patches.length === 0)) say(false, opts.pid !== undefined ? `process ${opts.pid} has no patches` : 'no patched processes');
      for (const p of processes) {
        if (p.patches.length === 0 && !p.transaction) continue;
        say(false, `${p.pid} ${p.exe}${p.transaction ? `  (unfinished ${p.transaction.op} of ${p.transaction.patchId}: run hotpatch recover --pid ${p.pid})` : ''}`);
        for (const x of p.patches) {
          const m = metaOf(p, x);
          const about = m && (m.cves.length > 0 || m.severity) ? `  ${[m.severity, ...m.cves].filter((v) => v).join(' ')}` : '';
          say(false, `  ${x.id}  ${x.state.padEnd(8)} ${x.module}  ${x.functions.join(', ')}  signer: ${x.signer ?? '(unsigned)'}${about}`);
        }
        for (const d of p.disagreements) say(false, `  code disagrees with the record: ${d} (run hotpatch recover --pid ${p.pid})`);
      }
    });
}
