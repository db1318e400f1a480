/** `hotpatch scan (FILE | --pid PID | --all)`: hotpatchable functions per module. */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import type { ModuleScan } from '../../scan/index.js';
import { EXIT_PARTIAL } from '../exit-codes.js';
import { printJson, progress, say } from '../output.js';
import { parsePidOption } from '../options.js';
import type { SetExitCode } from './index.js';

interface ScanCliOptions {
  pid?: string;
  all?: boolean;
  json?: boolean;
  functions?: boolean;
  checkBranches?: boolean;
  debugFile?: string;
  debugDir: string[];
}

/** What to do about a file without .symtab (it cannot be the --old of a patch by itself). */
function noSymtabAdvice(m: ModuleScan): string {
  const id = m.buildId;
  const where = id ? `/usr/lib/debug/.build-id/${id.slice(0, 2)}/${id.slice(2)}.debug` : '/usr/lib/debug/.build-id/XX/YYYY.debug';
  return (
    `${m.path} has no .symtab (stripped): only its ${m.total} exported functions are listed, and a patch cannot be built from this file alone. ` +
    `Get its symbols from the same build: install its debug package (${where}, e.g. the -dbgsym package) or keep the unstripped copy, ` +
    'then `hotpatch scan FILE --debug-file DEBUGFILE` and `hotpatch build --old FILE --old-debug DEBUGFILE ...`'
  );
}


function moduleLine(m: ModuleScan): string {
  if (m.error) return `  ${m.path}: not scanned: ${m.error.message}`;
  const pfe = (m.forms['patchable-function-entry'] ?? 0) + (m.forms['ms-hook-prologue'] ?? 0);
  return (
    `${m.percent.toFixed(1).padStart(6)}%  ${String(m.hotpatchable).padStart(6)}/${String(m.total).padEnd(6)} hotpatchable ` +
    `(${m.padded} padded${pfe > 0 ? `, ${pfe} compiled with hotpatch padding` : ''}, ${m.plain} plain, ${m.tooSmall} too-small)  ${m.path}` +
    (m.buildId ? `  [${m.buildId.slice(0, 12)}]` : '') +
    (m.symbolTable === 'dynsym' ? '  (exported functions only: no .symtab)' : m.symbolTable === 'none' ? '  (no function symbols)' : '')
  );
}

function printFunctions(json: boolean, m: ModuleScan): void {
  for (const f of m.functions) {
    const extra = [f.form !== f.entry ? f.form : '', f.reason ?? ''].filter((s) => s !== '').join(': ');
    say(json, `    0x${f.address.toString(16).padStart(12, '0')} ${String(f.size).padStart(7)} ${f.entry.padEnd(9)} ${f.name}${extra ? `  (${extra})` : ''}`);
  }
}

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('scan')
    .description('list the functions of a file or a running process and how each can be hotpatched (padded, plain, too-small)')
    .argument('[file]', 'ELF executable, shared library or object file to scan')
    .option('--pid <pid>', 'scan a running process (the code really in its memory, run-time addresses)')
    .option('--all', 'scan every process of the machine (kernel threads skipped; per-process errors reported)')
    .option('-v, --functions', 'list every function, not only the per-module summary (with --all: per-module lines, and function lists in --json)')
    .option('--check-branches', 'decode whole functions and refuse entries that a branch lands inside (slower)')
    .option('--debug-file <FILE>', 'with FILE: the symbols of a stripped FILE from its separate debug file or unstripped copy (same build-id)')
    .option('--debug-dir <DIR>', 'where debug files of stripped files are looked up by build-id (DIR/.build-id/XX/YYYY.debug; repeatable; default /usr/lib/debug)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--json', 'print one JSON document on stdout')
    .action(async (file: string | undefined, opts: ScanCliOptions) => {
      const chosen = [file !== undefined, opts.pid !== undefined, opts.all === true].filter(Boolean).length;
      if (chosen !== 1) throw new UsageError('USAGE_SCAN_TARGET', 'scan needs exactly one of FILE, --pid PID or --all (see hotpatch scan --help)');
      const json = opts.json === true;
      const options = { checkBranches: opts.checkBranches === true };
      const { scanAllProcesses, scanFile, scanProcess } = await import('../../scan/index.js');

      if (opts.all) {
        const r = scanAllProcesses(options);
        if (json) {
          printJson(opts.functions ? r : { ...r, processes: r.processes.map((p) => (p.modules ? { ...p, modules: p.modules.map(summaryOnly) } : p)) });
        } else {
          for (const p of r.processes) {
            if (p.error) {
              say(false, `pid ${p.pid}: not scanned: ${p.error.message}`);
              continue;
            }
            const mods = p.modules ?? [];
            const total = mods.reduce((a, m) => a + m.total, 0);
            const hp = mods.reduce((a, m) => a + m.hotpatchable, 0);
            say(false, `pid ${p.pid} (${p.name}) ${p.exe}: ${mods.length} modules, ${hp}/${total} functions hotpatchable`);
            if (opts.functions) for (const m of mods) say(false, `  ${moduleLine(m)}`);
          }
        }
        progress(
          `scanned ${r.scanned} processes in ${r.seconds.toFixed(2)} s (${r.modulesClassified} distinct modules, ${r.moduleCacheHits} reused); ` +
            `${r.failed} failed, ${r.kernelThreads} kernel threads skipped, ${r.exited} exited meanwhile`,
        );
        if (r.failed > 0) setExitCode(EXIT_PARTIAL);
        return;
      }

      const proc = opts.pid !== undefined ? scanProcess(parsePidOption(opts.pid), options) : undefined;
      if (opts.debugFile !== undefined && proc) throw new UsageError('USAGE', '--debug-file goes with a FILE scan, not --pid');
      const result =
        proc ??
        scanFile(file!, {
          ...options,
          ...(opts.debugFile !== undefined ? { debugFile: opts.debugFile } : {}),
          ...(opts.debugDir.length > 0 ? { debugDirs: opts.debugDir } : {}),
        });
      if (json) {
        printJson(result);
        return;
      }
      if (proc) say(false, `pid ${proc.pid} (${proc.name}) ${proc.exe}`);
      for (const m of result.modules) {
        say(false, moduleLine(m));
        if (opts.functions) printFunctions(false, m);
        if (!proc && m.symbolTable !== 'symtab' && !m.error) progress(`note: ${noSymtabAdvice(m)}`);
        else if (m.debugFile !== undefined) progress(`note: symbols from ${m.debugFile}`);
      }
    });
}

/** A module without its function list (for `--all --json` without --functions: keeps the output small). */
function summaryOnly(m: ModuleScan): Omit<ModuleScan, 'functions'> & { functions: [] } {
  return { ...m, functions: [] };
}
