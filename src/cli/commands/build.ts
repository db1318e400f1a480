/**
 * `hotpatch build --old RUNNING --new FIXED -o PKG [--key KEYFILE] [--cold] [--json]`: diff two
 * builds into a patch package. A refusal exits 3 and names every reason (with --json, stdout holds
 * `{"refused":true,"refusals":[...]}`).
 */
import { readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { DEFAULT_DEBUG_DIRS } from '../../elf/debug.js';
import type { Command } from 'commander';
import { HotpatchError, UsageError } from '../../errors.js';
import type { BuildResult } from '../../patch/builder/index.js';
import type { PatchPackage } from '../../patch/package/index.js';
import { CVE_ID, MAX_CVES, PATCH_SEVERITIES, type PatchSeverity } from '../../patch/package/metadata.js';
import { EXIT_REFUSED } from '../exit-codes.js';
import { collect } from '../options.js';
import { printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';

/** Inputs above this size get progress lines on stderr. */
const PROGRESS_THRESHOLD = 2 << 20;

interface BuildCliOptions {
  old: string;
  new: string;
  output: string;
  key?: string;
  cold?: boolean;
  description?: string;
  oldDebug?: string;
  newDebug?: string;
  debugDir: string[];
  unit: string[];
  cve: string[];
  severity?: string;
  json?: boolean;
}

/**
 * The symbols of a stripped build: the debug file given, else the one of its build-id under the
 * debug directories (authoritative when it exists: `strip --strip-unneeded` can leave a partial
 * .symtab); undefined when there is none (the builder uses the file's own .symtab or says how to
 * get symbols).
 */
async function debugFor(bytes: Uint8Array, given: string | undefined, dirs: readonly string[], what: string): Promise<{ bytes: Uint8Array; name: string } | undefined> {
  if (given !== undefined) return { bytes: readInput(given, `${what} debug`), name: basename(given) };
  const { findDebugFile, parseElf } = await import('../../elf/index.js');
  let elf;
  try {
    elf = parseElf(bytes);
    if (elf.buildId === null) return undefined;
  } catch {
    return undefined; // the builder reports what is wrong with the file
  }
  const found = findDebugFile(elf.buildId, dirs);
  return found ? { bytes: readInput(found, `${what} debug`), name: found } : undefined;
}

function isSeverity(s: string): s is PatchSeverity {
  return (PATCH_SEVERITIES as readonly string[]).includes(s);
}

function readInput(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path));
  } catch (e) {
    throw new UsageError('BUILD_INPUT_UNREADABLE', `cannot read the ${what} build ${path}: ${(e as Error).message}`);
  }
}

function hexAddr(v: bigint): string {
  return `0x${v.toString(16)}`;
}

function summary(r: BuildResult, pkg: PatchPackage, output: string): string {
  const lines: string[] = [];
  lines.push(`wrote ${output}: patch ${pkg.id} for ${r.plan.target.name} (build-id ${r.plan.target.buildId})`);
  lines.push(`${r.report.changed.length} changed function(s):`);
  for (const c of r.report.changed) {
    const name = c.file ? `${c.name} (${c.file})` : c.name;
    const extra = c.appended.length > 0 ? `, carries ${c.appended.join(', ')}` : '';
    lines.push(
      `  ${name} at ${hexAddr(c.vaddr)}: ${c.oldSize} -> ${c.newSize} bytes, ${c.codeSize} bytes of new code, ${c.relocations} relocations, entry ${c.entry} (${c.entryForm})${extra}; ${c.reason}`,
    );
  }
  if (r.report.data.length > 0) {
    lines.push(`${r.report.data.length} data item(s) carried:`);
    for (const d of r.report.data) lines.push(`  ${d.name}: ${d.size} bytes, ${d.relocations} relocations${d.writable ? ' (new variable)' : ''}`);
  }
  for (const w of r.report.warnings) lines.push(`warning: ${w}`);
  lines.push(`signed: ${pkg.signature ? `yes (key ${pkg.signature.keyId})` : 'no'}; cold payload: ${pkg.cold ? 'yes' : 'no'}; built in ${r.report.stats.millis} ms`);
  return lines.join('\n');
}

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('build')
    .description('diff two builds of a program or library into a patch package holding only the changed functions')
    .requiredOption('--old <FILE>', 'the running build (exactly the file the processes run)')
    .requiredOption('--new <FILE>', 'the fixed build (same compiler, flags and link options)')
    .requiredOption('-o, --output <PKG>', 'package file to write (.hpk)')
    .option('-k, --key <KEYFILE>', 'sign the package with this private key (from `hotpatch keygen`)')
    .option('--cold', 'carry the complete fixed file for a cold install (`apply --cold`)')
    .option('--description <TEXT>', 'a description stored in the package (signed with it)')
    .option('--old-debug <FILE>', 'symbols of a stripped --old: its separate debug file or an unstripped copy (same build-id)')
    .option('--new-debug <FILE>', 'symbols of a stripped --new, likewise')
    .option('--debug-dir <DIR>', `where stripped builds' debug files are looked up by build-id (DIR/.build-id/XX/YYYY.debug; repeatable; default ${DEFAULT_DEBUG_DIRS.join(', ')})`, (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--unit <NEW=OLD>', 'pair the compilation unit NEW (source file name) of --new with OLD of --old when a renamed source cannot be paired by its statics (repeatable)', collect, [])
    .option('--cve <ID>', 'a CVE id the patch fixes, e.g. CVE-2024-1234 (repeatable; signed with the package)', collect, [])
    .option('--severity <LEVEL>', `how urgent the fix is: ${PATCH_SEVERITIES.join(', ')} (signed with the package)`)
    .option('--json', 'print one JSON document on stdout')
    .addHelpText(
      'after',
      '\nBuild both files with the same flags, ideally (-g also checks struct layouts):\n  -O2 -fpatchable-function-entry=7,5 -ffunction-sections -Wl,--emit-relocs\n' +
        '\nThe running file may be the stripped one a package installed\n(e.g. /usr/lib/x86_64-linux-gnu/libfoo.so.2.9.14): symbols then come from\n' +
        '--old-debug, else from its debug package (/usr/lib/debug/.build-id/XX/YYYY.debug).\n' +
        '\nExamples:\n  hotpatch build --old /usr/sbin/server --new build/server \\\n    -o fix.hpk --key release.key\n' +
        '  hotpatch build --old /usr/lib/x86_64-linux-gnu/libfoo.so.2.9.14 \\\n    --new build/libfoo.so.2.9.14 -o fix.hpk\n',
    )
    .action(async (opts: BuildCliOptions) => {
      const json = opts.json ?? false;
      const { buildPatch, BuildRefusedError } = await import('../../patch/builder/index.js');
      const { createPackage, encodePackage, makeColdPayload, writeFileAtomic } = await import('../../patch/package/index.js');
      const { readPrivateKeyFile, signPackage } = await import('../../patch/trust/index.js');
      for (const c of opts.cve) if (!CVE_ID.test(c)) throw new UsageError('USAGE_BAD_CVE', `--cve ${c} is not a CVE id (CVE-YYYY-NNNN)`);
      if (opts.cve.length > MAX_CVES) throw new UsageError('USAGE_BAD_CVE', `at most ${MAX_CVES} --cve ids per package`);
      const severity = opts.severity;
      if (severity !== undefined && !isSeverity(severity)) {
        throw new UsageError('USAGE_BAD_SEVERITY', `--severity ${severity} is not one of ${PATCH_SEVERITIES.join(', ')}`);
      }
      const units: Record<string, string> = {};
      for (const u of opts.unit) {
        const m = /^([^=]+)=([^=]+)$/.exec(u);
        if (!m) throw new UsageError('USAGE_BAD_UNIT', `--unit ${u} is not NEW=OLD (two source file names, e.g. --unit server-fixed.c=server.c)`);
        units[m[1]!] = m[2]!;
      }
      const oldBytes = readInput(opts.old, 'old');
      const newBytes = readInput(opts.new, 'new');
      const dirs = opts.debugDir.length > 0 ? opts.debugDir : DEFAULT_DEBUG_DIRS;
      const oldDebug = await debugFor(oldBytes, opts.oldDebug, dirs, 'old');
      const newDebug = await debugFor(newBytes, opts.newDebug, dirs, 'new');
      const large = oldBytes.length + newBytes.length > PROGRESS_THRESHOLD;
      const t0 = Date.now();
      let result: BuildResult;
      try {
        result = buildPatch(oldBytes, newBytes, {
          oldName: basename(opts.old),
          newName: basename(opts.new),
          units,
          ...(oldDebug ? { oldDebug } : {}),
          ...(newDebug ? { newDebug } : {}),
          ...(large ? { progress: (m: string) => progress(`hotpatch build: ${m} (${((Date.now() - t0) / 1000).toFixed(1)} s)`) } : {}),
        });
      } catch (e) {
        if (e instanceof BuildRefusedError) {
          // Each refusal on its own line with its own code.
          if (json) printJson({ refused: true, code: e.code, refusals: e.refusals });
          const n = e.refusals.length;
          progress(`hotpatch: refused (${n} reason${n === 1 ? '' : 's'}); nothing was written:`);
          for (const r of e.refusals) progress(`  ${r.message} [${r.code}]`);
          setExitCode(EXIT_REFUSED);
          return;
        }
        throw e;
      }
      let cold;
      if (opts.cold) {
        if (!result.report.newBuildId) {
          throw new HotpatchError('BUILD_NO_BUILD_ID', `${opts.new} has no GNU build-id note, which the cold payload records: link with -Wl,--build-id`);
        }
        cold = makeColdPayload(newBytes, { buildId: result.report.newBuildId, mode: statSync(opts.new).mode & 0o7777 });
      }
      let pkg = createPackage(result.plan, {
        ...(cold ? { cold } : {}),
        ...(opts.description !== undefined ? { description: opts.description } : {}),
        ...(opts.cve.length > 0 ? { cves: opts.cve } : {}),
        ...(severity !== undefined ? { severity } : {}),
      });
      if (opts.key !== undefined) pkg = signPackage(pkg, readPrivateKeyFile(opts.key));
      writeFileAtomic(opts.output, encodePackage(pkg));
      if (json) {
        printJson({
          package: opts.output,
          id: pkg.id,
          target: result.plan.target,
          functions: result.report.changed,
          data: result.report.data,
          signed: pkg.signature !== undefined,
          signer: pkg.signature ? { keyId: pkg.signature.keyId, name: pkg.signature.signer ?? null } : null,
          cold: pkg.cold !== undefined,
          description: pkg.meta.description ?? null,
          cves: pkg.meta.cves ?? [],
          severity: pkg.meta.severity ?? null,
          warnings: result.report.warnings,
          stats: result.report.stats,
        });
      }
      say(json, summary(result, pkg, opts.output));
    });
}
