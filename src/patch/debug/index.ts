/**
 * Symbols for debuggers and profilers of patched processes: a perf map (/tmp/perf-PID.map) and a
 * gdb symbol file with the new code's functions and unwind information.
 */
import { collectDebugInfo, type DebugInfo } from './collect.js';
import { DEFAULT_GDB_DIR, gdbCommand, writeGdbSymbolFile } from './gdb-elf.js';
import { perfMapPath, writePerfMap } from './perf-map.js';

export { collectDebugInfo, type DebugFunction, type DebugInfo, type DebugPatch } from './collect.js';
export { DEFAULT_GDB_DIR, gdbCommand, gdbSymbolFile, gdbSymbolPath, writeGdbSymbolFile } from './gdb-elf.js';
export { perfMapLines, perfMapPath, writePerfMap } from './perf-map.js';
export { mergeEhFrames, type EhFrameImage } from './eh-frame-merge.js';
export { functionCfi, synthesizeDebugFrame, type CfiFunction } from './synth-cfi.js';
export { writeElf, type WriterSection, type WriterSymbol } from './elf-writer.js';

export interface DebugSymbolsOptions {
  /** Write the perf map: true for /tmp/perf-PID.map, or a path. */
  perf?: boolean | string;
  /** Write the gdb symbol file into this directory (true: DEFAULT_GDB_DIR). */
  gdb?: boolean | string;
}

export interface DebugSymbolsResult {
  pid: number;
  /** Patches and functions described. */
  patches: number;
  functions: number;
  perf?: { path: string; symbols: number };
  gdb?: { path: string; symbols: number; ehFrame: boolean; computedFrames: number; command: string[] };
  info: DebugInfo;
}

/** Writes the requested symbol files for process `pid` (read from the target alone, no ptrace). */
export function writeDebugSymbols(pid: number, options: DebugSymbolsOptions): DebugSymbolsResult {
  const info = collectDebugInfo(pid);
  const r: DebugSymbolsResult = { pid, patches: info.patches.length, functions: info.patches.reduce((n, p) => n + p.functions.length, 0), info };
  if (options.perf !== undefined && options.perf !== false) r.perf = writePerfMap(info, typeof options.perf === 'string' ? options.perf : perfMapPath(pid));
  if (options.gdb !== undefined && options.gdb !== false) {
    const g = writeGdbSymbolFile(info, typeof options.gdb === 'string' ? options.gdb : DEFAULT_GDB_DIR);
    r.gdb = { ...g, command: gdbCommand(pid, g.path) };
  }
  return r;
}
