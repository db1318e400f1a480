/** `hotpatch apply PKG --pid PID`: apply a patch package to a running process (library: applyPatch). */
import { createHash } from 'node:crypto';
import type { Command } from 'commander';
import { HotpatchError, RefusedError, UsageError } from '../../errors.js';
import { applyPatch, type ApplyResult, type RecordSigning } from '../../patch/engine/index.js';
import { packageSigningMessage, type PatchPackage } from '../../patch/package/index.js';
import { readTrustedPackage } from '../../patch/trust/index.js';
import { EXIT_ERROR, EXIT_REFUSED } from '../exit-codes.js';
import { printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';

/** Parses a --pid value. */
export function parsePidOption(text: string): number {
  const pid = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid > 0x3fffffff) throw new UsageError('USAGE_BAD_PID', `--pid ${text} is not a valid process id`);
  return pid;
}

/** Parses a --timeout value in seconds into milliseconds. */
export function parseTimeoutOption(text: string): number {
  const s = Number(text);
  if (!Number.isFinite(s) || s < 0 || s > 3600) throw new UsageError('USAGE_BAD_TIMEOUT', `--timeout ${text} is not a number of seconds between 0 and 3600`);
  return Math.round(s * 1000);
}

/**
 * The package's content section (CONT) body: the exact bytes whose SHA-256 the signature covers.
 * Layout (src/patch/package/codec.ts): 12-byte header, then "CONT" | u32 length | body first.
 */
export function packageContentSection(bytes: Uint8Array): Uint8Array | undefined {
  if (bytes.length < 20 || new TextDecoder().decode(bytes.subarray(12, 16)) !== 'CONT') return undefined;
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(16, true);
  return 20 + len <= bytes.length ? bytes.slice(20, 20 + len) : undefined;
}

function signingOf(pkg: PatchPackage): RecordSigning | undefined {
  const s = pkg.signature;
  if (!s) return undefined;
  const r: RecordSigning = {
    algorithm: s.algorithm,
    keyId: s.keyId,
    publicKey: s.publicKey,
    signature: s.signature,
    message: packageSigningMessage(pkg, s.signer),
  };
  if (s.signer !== undefined) r.signer = s.signer;
  return r;
}

/** JSON result entry (cli.md: `{"pid","status","patchId","pauseMicros","reason"?}` plus extra fields). */
export function resultJson(pid: number, patchId: string, status: string, pauseMicros: number, extra: Record<string, unknown> = {}, reason?: string): Record<string, unknown> {
  return { pid, status, patchId, pauseMicros, ...(reason !== undefined ? { reason } : {}), ...extra };
}

/** Runs an engine operation for the CLI: JSON or human output, refusal → 3, error → 1. */
export async function runForCli<T>(
  json: boolean,
  pid: number,
  patchId: string,
  setExitCode: SetExitCode,
  op: () => Promise<T>,
  describe: (r: T) => { results: Array<Record<string, unknown>>; text: string },
): Promise<void> {
  try {
    const r = await op();
    const d = describe(r);
    if (json) printJson({ results: d.results });
    else say(false, d.text);
  } catch (e) {
    if (!json || !(e instanceof HotpatchError)) throw e;
    const refused = e instanceof RefusedError;
    printJson({ results: [resultJson(pid, patchId, refused ? 'refused' : 'failed', 0, { code: e.code }, e.message)] });
    progress(`hotpatch: ${e.message} [${e.code}]`);
    setExitCode(refused ? EXIT_REFUSED : EXIT_ERROR);
  }
}

function pause(r: ApplyResult): string {
  return r.setupPauseMicros > 0 ? `pause ${r.pauseMicros.toFixed(0)} µs (+ ${r.setupPauseMicros.toFixed(0)} µs to map the arena)` : `pause ${r.pauseMicros.toFixed(0)} µs`;
}

export function register(program: Command, setExitCode: SetExitCode): void {
  program
    .command('apply')
    .description('apply a patch package to a running process, switching all its functions in one short freeze')
    .argument('<PKG>', 'the .hpk package')
    .requiredOption('--pid <PID>', 'the process to patch')
    .option('--timeout <SECONDS>', 'how long to retry while a thread is inside the bytes to change', '5')
    .option('--dry-run', 'check everything (build-id, site bytes, symbols, relocation) and change nothing')
    .option('--allow-unsigned', 'accept a package without a trusted signature')
    .option('--trust <PUBFILE>', 'trusted public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch apply fix.hpk --pid 1234\n  hotpatch apply fix.hpk --pid 1234 --dry-run --allow-unsigned --json\n')
    .action(async (file: string, opts: { pid: string; timeout: string; dryRun?: boolean; allowUnsigned?: boolean; trust: string[]; json?: boolean }) => {
      const json = opts.json ?? false;
      const pid = parsePidOption(opts.pid);
      const timeoutMs = parseTimeoutOption(opts.timeout);
      const { pkg, bytes, verdict } = readTrustedPackage(file, { trustFiles: opts.trust, allowUnsigned: opts.allowUnsigned ?? false });
      const signing = signingOf(pkg);
      const content = packageContentSection(bytes);
      const options: Parameters<typeof applyPatch>[2] = {
        patchId: pkg.id,
        packageHash: createHash('sha256').update(bytes).digest('hex'),
        signer: verdict.signer ? (verdict.signer.name ? `${verdict.signer.name} (${verdict.signer.keyId})` : verdict.signer.keyId) : null,
        timeoutMs,
        dryRun: opts.dryRun ?? false,
      };
      if (signing) options.signing = signing;
      if (content) options.content = content;
      await runForCli(json, pid, pkg.id, setExitCode, () => applyPatch(pid, pkg.plan, options), (r) => ({
        results: [resultJson(pid, r.patchId, r.status === 'dry-run' ? 'skipped' : r.status, r.pauseMicros, {
          setupPauseMicros: r.setupPauseMicros,
          totalPauseMicros: r.totalPauseMicros,
          attempts: r.attempts,
          threads: r.threads,
          totalMicros: r.totalMicros,
          dryRun: r.status === 'dry-run',
          functions: r.functions,
        }, r.status === 'dry-run' ? 'dry run: every check passed, nothing was changed' : undefined)],
        text:
          r.status === 'patched'
            ? `patched process ${pid} with ${r.patchId}: ${r.functions.map((f) => f.name).join(', ')} (${r.threads} threads, ${pause(r)})`
            : r.status === 'already-patched'
              ? `process ${pid} already has patch ${r.patchId}`
              : `dry run: patch ${r.patchId} fits process ${pid} (${r.functions.map((f) => `${f.name} ${f.kind}`).join(', ')}); nothing was changed`,
      }));
    });
}
