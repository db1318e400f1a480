/**
 * Finding the processes a package applies to: every process that maps the package's target image
 * (executable or shared library), matched by GNU build-id — whatever path it was loaded from, and
 * whether that file still exists or was deleted/replaced since — plus the processes that map a
 * file of the same name, or of the same library by file name or DT_SONAME, but another build
 * (reported as skipped, never touched).
 */
import { RefusedError } from '../../errors.js';
import { enumerateProcessIds, openProcess, readSonameFromFile, type Module } from '../../process/index.js';
import { findRecordMapping, listPatches, type ProcessPatches } from '../engine/index.js';
import type { TargetIdentity } from '../plan.js';

/** A process that maps the target image. */
export interface ImageProcess {
  pid: number;
  exe: string;
  /** The target module in that process. */
  module: Module;
}

/** A process that maps a file of the target's name with another build-id. */
export interface OtherBuildProcess {
  pid: number;
  exe: string;
  module: Module;
  /** "runs the fixed build" when its build-id is the package's fixed build, else "runs another build ...". */
  reason: string;
  /** True when it runs the fixed build (e.g. started from a cold-patched file). */
  fixed: boolean;
}

export interface ImageScan {
  matches: ImageProcess[];
  others: OtherBuildProcess[];
  /**
   * With explicit `pids` only: processes that could not be inspected (the typed error: exited,
   * permission) or that do not map the target at all (RefusedError MODULE_NOT_LOADED).
   */
  unreadable: Array<{ pid: number; error: Error }>;
}

/** Options of {@link findImageProcesses}. */
export interface FindOptions {
  /** Only these processes (default: every process but this one). */
  pids?: readonly number[];
  /** Build-id of the fixed build (the cold payload's), to say "runs the fixed build". */
  fixedBuildId?: string;
}

/** Why a module of the target's name but another build-id is left alone. */
export function otherBuildReason(module: Module, target: TargetIdentity, fixedBuildId?: string): { reason: string; fixed: boolean } {
  const id = module.buildId ?? '(none)';
  if (fixedBuildId !== undefined && module.buildId === fixedBuildId.toLowerCase()) {
    return { reason: `runs the fixed build (${module.path}, build-id ${id}): nothing to patch`, fixed: true };
  }
  return { reason: `runs another build of ${target.name} (${module.path}, build-id ${id}; the patch is for ${target.buildId})`, fixed: false };
}

/**
 * Scans processes for the target image. Processes that exit or cannot be read during the scan are
 * listed in `unreadable` (with `pids` given) or ignored (whole-machine scan).
 */
export function findImageProcesses(target: TargetIdentity, options: FindOptions = {}): ImageScan {
  const want = target.buildId.toLowerCase();
  const explicit = options.pids !== undefined;
  const pids = options.pids ? [...new Set(options.pids)] : enumerateProcessIds().filter((p) => p !== process.pid);
  const scan: ImageScan = { matches: [], others: [], unreadable: [] };
  for (const pid of pids) {
    let proc;
    try {
      proc = openProcess(pid);
    } catch (e) {
      if (explicit) scan.unreadable.push({ pid, error: e as Error });
      continue;
    }
    try {
      const modules = proc.enumerateModules();
      const exe = safeExe(() => proc.getExePath());
      const match = modules.find((m) => m.buildId === want);
      if (match) {
        scan.matches.push({ pid, exe, module: match });
        continue;
      }
      const sameName = modules.find((m) => m.name === target.name && m.kind !== 'vdso') ?? modules.find((m) => m.kind !== 'vdso' && sameLibrary(m.name, target.name)) ?? modules.find((m) => sameSoname(m, target.name));
      if (sameName) scan.others.push({ pid, exe, module: sameName, ...otherBuildReason(sameName, target, options.fixedBuildId) });
      else if (explicit) {
        const error = new RefusedError('MODULE_NOT_LOADED', `process ${pid} (${exe}) does not map ${target.name} (build-id ${target.buildId}); nothing was changed`);
        scan.unreadable.push({ pid, error });
      }
    } catch (e) {
      if (explicit) scan.unreadable.push({ pid, error: e as Error });
    } finally {
      proc.close();
    }
  }
  return scan;
}

/**
 * Two file names of one shared library in another version: the same `libNAME.so` and the same
 * major version, the soname convention (`libxml2.so.2.9.14` and `libxml2.so.2.9.13`, both reached
 * through `libxml2.so.2`). A process mapping such a file runs another build of the target.
 */
export function sameLibrary(a: string, b: string): boolean {
  const parse = (n: string) => /^(.+\.so)(?:\.(\d+))?(?:\.[0-9.]+)?$/.exec(n);
  const x = parse(a);
  const y = parse(b);
  if (!x || !y || x[1] !== y[1]) return false;
  return x[2] === undefined || y[2] === undefined || x[2] === y[2];
}

/**
 * A library whose file has an unrelated name (a bundled or renamed copy) but whose DT_SONAME names
 * the target's library: `xmlparser.so` with soname `libexpat.so.1` is another build of
 * `libexpat.so.1.8.10`.
 */
function sameSoname(m: Module, targetName: string): boolean {
  if (m.kind !== 'library') return false;
  const soname = readSonameFromFile(m.mapFilesPath ?? m.path, m.elf);
  return soname !== undefined && (soname === targetName || sameLibrary(soname, targetName));
}

function safeExe(f: () => string): string {
  try {
    return f();
  } catch {
    return '?';
  }
}

/**
 * Every process that has an in-process patch record (i.e. was ever patched), read from the targets
 * themselves (no lock, no ptrace). `pids` restricts the scan.
 */
export function findPatchedProcesses(pids?: readonly number[]): ProcessPatches[] {
  const out: ProcessPatches[] = [];
  for (const pid of pids ?? enumerateProcessIds().filter((p) => p !== process.pid)) {
    try {
      if (pids === undefined) {
        // Cheap filter first: only processes with the record mapping are read further.
        const proc = openProcess(pid);
        let has: boolean;
        try {
          has = findRecordMapping(proc.enumerateMappings()) !== undefined;
        } catch {
          has = true; // an odd record mapping: let listPatches report it
        } finally {
          proc.close();
        }
        if (!has) continue;
      }
      const listed = listPatches(pid);
      if (listed.record !== null || pids !== undefined) out.push(listed);
    } catch (e) {
      if (pids !== undefined) throw e;
    }
  }
  return out;
}
