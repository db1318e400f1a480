/** `hotpatch list [--pid PID]`: the patches recorded in running processes, read from the targets alone. */
import type { Command } from 'commander';
import { HotpatchError } from '../../errors.js';
// Direct imports: the engine's index loads the x86 encoder and the FFI, which list does not need.
import { listPatches, type ProcessPatches } from '../../patch/engine/list.js';
import { RECORD_MAPS_PATH } from '../../patch/engine/record.js';
import { enumerateProcessIds } from '../../process/inspect/index.js';
import { printJson, progress, say } from '../output.js';
import { readFileSync } from 'node:fs';
import { parsePidOption } from '../options.js';
import { decodePackageContent } from '../../patch/package/index.js';
import type { SetExitCode } from './index.js';

/** PIDs whose /proc/PID/maps shows a hotpatch record (cheap text search, no parsing). */
function patchedPids(): number[] {
  const out: number[] = [];
  for (const pid of enumerateProcessIds()) {
    if (pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/maps`, 'latin1').includes(RECORD_MAPS_PATH)) out.push(pid);
    } catch {
      /* exited or not ours to read */
    }
  }
  return out;
}

/** The signed metadata of patch `id` as its record in process `p` holds it (null when the record has no content). */
export function recordedMeta(p: ProcessPatches, id: string): { description: string | null; cves: string[]; severity: string | null } | null {
  const content = p.record?.patches.find((r) => r.id === id)?.content;
  if (!content) return null;
  try {
    const { meta } = decodePackageContent(content);
    return { description: meta.description ?? null, cves: meta.cves ?? [], severity: meta.severity ?? null };
  } catch {
    return null;
  }
}

function toJson(p: ProcessPatches): unknown {
  return {
    pid: p.pid,
    exe: p.exe,
    patches: p.patches.map((x) => ({
      id: x.id, module: x.module, functions: x.functions, signer: x.signer, state: x.state, buildId: x.buildId, packageHash: x.packageHash,
      appliedAt: new Date(x.appliedAt).toISOString(), sites: x.sites,
      ...(recordedMeta(p, x.id) ?? { description: null, cves: [], severity: null }),
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
    .action((opts: { pid?: string; json?: boolean }) => {
      const json = opts.json ?? false;
      const pids = opts.pid !== undefined ? [parsePidOption(opts.pid)] : patchedPids();
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
        printJson({ processes: processes.map(toJson) });
        return;
      }
      if (processes.every((p) => p.patches.length === 0)) say(false, opts.pid !== undefined ? `process ${opts.pid} has no patches` : 'no patched processes');
      for (const p of processes) {
        if (p.patches.length === 0 && !p.transaction) continue;
        say(false, `${p.pid} ${p.exe}${p.transaction ? `  (unfinished ${p.transaction.op} of ${p.transaction.patchId}: run hotpatch recover --pid ${p.pid})` : ''}`);
        for (const x of p.patches) {
          const m = recordedMeta(p, x.id);
          const about = m && (m.cves.length > 0 || m.severity) ? `  ${[m.severity, ...m.cves].filter((v) => v).join(' ')}` : '';
          say(false, `  ${x.id}  ${x.state.padEnd(8)} ${x.module}  ${x.functions.join(', ')}  signer: ${x.signer ?? '(unsigned)'}${about}`);
        }
        for (const d of p.disagreements) say(false, `  code disagrees with the record: ${d} (run hotpatch recover --pid ${p.pid})`);
      }
    });
}
