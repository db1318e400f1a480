/**
 * The symbol file gdb loads for a patched process: one ELF (./elf-writer.ts) holding, per patch, a
 * `.text.hotpatch.ID` section with the new code's bytes at their run-time address (as read from
 * the target), a FUNC symbol per patched function at its new code, and one `.eh_frame` with the
 * unwind information of every patch that carries one (./eh-frame-merge.ts), so that gdb names the
 * patched frames and unwinds past them. Loaded with `add-symbol-file FILE -o 0`: the sections'
 * addresses are already the run-time ones.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ensurePrivateDir, writeFileAtomic } from '../../fs/index.js';
import type { DebugInfo } from './collect.js';
import { mergeEhFrames } from './eh-frame-merge.js';
import { synthesizeDebugFrame, type CfiFunction } from './synth-cfi.js';
import { SHF_ALLOC, SHF_EXECINSTR, SHT_PROGBITS, STT_FUNC, writeElf, type WriterSection, type WriterSymbol } from './elf-writer.js';

/** Where `hotpatch symbols --gdb` writes by default (root-only, like the rest of /run/hotpatch). */
export const DEFAULT_GDB_DIR = '/run/hotpatch/debug';

/** Section name of a patch's code: ids are [A-Za-z0-9._-] already; anything else becomes `_`. */
function codeSection(id: string): string {
  return `.text.hotpatch.${id.replace(/[^A-Za-z0-9._-]/g, '_')}`;
}

/** The symbol file's bytes for `info`. */
export function gdbSymbolFile(info: DebugInfo): Uint8Array {
  const sections: WriterSection[] = [];
  const symbols: WriterSymbol[] = [];
  for (const p of info.patches) {
    const index = sections.length;
    sections.push({ name: codeSection(p.id), type: SHT_PROGBITS, flags: SHF_ALLOC | SHF_EXECINSTR, addr: p.code.start, bytes: p.bytes, align: 16 });
    for (const f of p.functions) symbols.push({ name: f.name, value: f.address, size: f.size, type: STT_FUNC, section: index });
  }
  const eh = mergeEhFrames(info.patches.flatMap((p) => (p.ehFrame ? [p.ehFrame] : [])));
  if (eh) sections.push({ name: '.eh_frame', type: SHT_PROGBITS, flags: SHF_ALLOC, addr: eh.address, bytes: eh.bytes, align: 8 });
  const df = debugFrameOf(info);
  if (df) sections.push({ name: '.debug_frame', type: SHT_PROGBITS, flags: 0, addr: 0n, bytes: df.bytes, align: 8 });
  return writeElf(sections, symbols);
}

/** CFI computed from the code (./synth-cfi.ts) for the functions of patches that carry no `.eh_frame`. */
export function debugFrameOf(info: DebugInfo): { bytes: Uint8Array; fdes: number } | undefined {
  const fns: CfiFunction[] = [];
  for (const p of info.patches) {
    if (p.ehFrame) continue;
    for (const f of p.functions) {
      const from = Number(f.address - p.code.start);
      const to = from + Number(f.size);
      if (f.address >= p.code.start && to <= p.bytes.length && f.size > 0n) fns.push({ address: f.address, code: p.bytes.subarray(from, to) });
    }
  }
  return synthesizeDebugFrame(fns);
}

/** Path of the symbol file of `pid` in `dir`. */
export function gdbSymbolPath(pid: number, dir = DEFAULT_GDB_DIR): string {
  return join(dir, `${pid}.elf`);
}

/** The gdb command line that attaches to `pid` with the symbol file loaded. */
export function gdbCommand(pid: number, file: string): string[] {
  return ['gdb', '-p', String(pid), '-ex', `add-symbol-file ${file} -o 0`];
}

/**
 * Writes the symbol file of `info` into `dir` (created 0700 when missing; an existing directory
 * is checked by writeFileAtomic: nobody else may redirect the write). Mode 0644.
 */
export function writeGdbSymbolFile(info: DebugInfo, dir = DEFAULT_GDB_DIR): { path: string; symbols: number; ehFrame: boolean; computedFrames: number } {
  if (!existsSync(dir)) ensurePrivateDir(dir, 'debug symbol directory');
  const path = gdbSymbolPath(info.pid, dir);
  writeFileAtomic(path, gdbSymbolFile(info), { mode: 0o644, what: 'gdb symbol file' });
  return { path, symbols: info.patches.reduce((n, p) => n + p.functions.length, 0), ehFrame: info.patches.some((p) => p.ehFrame !== undefined), computedFrames: debugFrameOf(info)?.fdes ?? 0 };
}
