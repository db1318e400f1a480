/** `hotpatch symbols --pid PID [--perf] [--gdb [DIR]]`: symbol files for perf and gdb that name the patched code. */
import type { Command } from 'commander';
import { printJson, say } from '../output.js';
import { parsePidOption } from '../options.js';
import type { SetExitCode } from './index.js';

interface SymbolsCliOptions {
  pid: string;
  perf?: boolean;
  gdb?: boolean | string;
  json?: boolean;
}

/** A shell word: quoted unless it is plain. */
function shellWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('symbols')
    .description('write symbols for the patched code of a process: a perf map (/tmp/perf-PID.map) and a gdb symbol file')
    .requiredOption('--pid <PID>', 'the patched process')
    .option('--perf', 'write /tmp/perf-PID.map (perf report/script then name the patched functions)')
    .option('--gdb [DIR]', 'write the gdb symbol file PID.elf into DIR (default /run/hotpatch/debug)')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nWithout --perf and --gdb both are written.\n\nExamples:\n  hotpatch symbols --pid 1234\n  hotpatch symbols --pid 1234 --gdb /tmp/syms --json\n')
    .action(async (opts: SymbolsCliOptions) => {
      const { writeDebugSymbols } = await import('../../patch/debug/index.js');
      const pid = parsePidOption(opts.pid);
      const both = opts.perf === undefined && opts.gdb === undefined;
      const r = writeDebugSymbols(pid, { perf: both || opts.perf === true, gdb: both ? true : (opts.gdb ?? false) });
      const command = r.gdb ? r.gdb.command.map(shellWord).join(' ') : null;
      if (opts.json) {
        printJson({
          pid,
          patches: r.patches,
          functions: r.functions,
          perfMap: r.perf ? { path: r.perf.path, symbols: r.perf.symbols } : null,
          gdb: r.gdb ? { path: r.gdb.path, symbols: r.gdb.symbols, ehFrame: r.gdb.ehFrame, computedFrames: r.gdb.computedFrames, command } : null,
        });
        return;
      }
      if (r.patches === 0) say(false, `process ${pid} has no patch code mapped: the files list no symbols`);
      if (r.perf) say(false, `perf map: ${r.perf.path} (${r.perf.symbols} symbols)`);
      if (r.gdb) {
        say(false, `gdb symbol file: ${r.gdb.path} (${r.gdb.symbols} symbols${r.gdb.ehFrame ? ', the patches\' unwind information' : ''}${r.gdb.computedFrames > 0 ? `, frame information computed for ${r.gdb.computedFrames} functions` : ''})`);
        say(false, `attach with: ${command}`);
      }
    });
}
