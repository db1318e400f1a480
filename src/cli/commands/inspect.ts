/** `hotpatch inspect PKG`: target, functions, sizes, signer, id — and the decoded new code on request. */
import type { Command } from 'commander';
import { X86Error } from '../../errors.js';
import type { PatchPackage } from '../../patch/package/index.js';
import type { Relocation, RelocationTarget } from '../../patch/plan.js';
import type { SignatureVerdict } from '../../patch/trust/index.js';
import type { decodeFunction as DecodeFunction } from '../../x86/index.js';
import { hex, printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';

/** The x86 decoder, loaded only for --code (iced-x86 costs most of the start-up time). */
let decodeFunction: typeof DecodeFunction | undefined;

function describeTarget(t: RelocationTarget): string {
  switch (t.kind) {
    case 'module':
      return `module 0x${t.vaddr.toString(16)}`;
    case 'symbol':
      return `${t.name}${t.version ? `@${t.version}` : ''}${t.file ? ` (${t.file})` : ''}`;
    case 'local':
      return `patch ${t.part} ${t.index}+0x${t.offset.toString(16)}`;
  }
}

function describeReloc(r: Relocation): string {
  const add = r.addend === 0n ? '' : r.addend < 0n ? ` - 0x${(-r.addend).toString(16)}` : ` + 0x${r.addend.toString(16)}`;
  return `${r.type} ${describeTarget(r.target)}${add}`;
}

interface CodeLine {
  offset: number;
  bytes: string;
  text: string;
  relocations: string[];
}

/** Decodes new code at offset 0 (its arena address is chosen at apply time); notes relocated fields. */
function decodeCode(code: Uint8Array, relocs: readonly Relocation[]): CodeLine[] {
  const lines: CodeLine[] = [];
  for (const insn of decodeFunction!(code, 0n)) {
    const start = Number(insn.address);
    const end = start + insn.length;
    lines.push({
      offset: start,
      bytes: hex(insn.bytes),
      text: insn.invalid ? '(bad)' : insn.text,
      relocations: relocs.filter((r) => r.offset >= start && r.offset < end).map(describeReloc),
    });
  }
  return lines;
}

function inspectJson(pkg: PatchPackage, size: number, verdict: SignatureVerdict, withCode: boolean): unknown {
  const sig = pkg.signature;
  return {
    id: pkg.id,
    formatVersion: pkg.formatVersion,
    size,
    target: { buildId: pkg.plan.target.buildId, name: pkg.plan.target.name, size: pkg.plan.target.size },
    functions: pkg.plan.functions.map((f) => ({
      name: f.name,
      ...(f.file !== undefined ? { file: f.file } : {}),
      offset: f.vaddr,
      size: f.size,
      newSize: f.code.byteLength,
      align: f.align,
      entry: { kind: f.entry.kind, site: f.entry.siteVaddr, switch: f.entry.switchVaddr, expected: hex(f.entry.expected) },
      oldHash: f.oldHash,
      relocations: f.relocations.length,
      ...(withCode ? { code: decodeCode(f.code, f.relocations) } : {}),
    })),
    data: pkg.plan.data.map((d) => ({ name: d.name, size: d.bytes.byteLength, align: d.align, relocations: d.relocations.length })),
    signer: sig
      ? { keyId: sig.keyId, name: verdict.signer?.name ?? sig.signer ?? null, status: verdict.status, ...(verdict.signer?.source ? { trustedBy: verdict.signer.source } : {}) }
      : null,
    signature: verdict.status,
    cold: pkg.cold !== undefined,
    ...(pkg.cold
      ? {
          coldPayload: {
            size: pkg.cold.size,
            compressedSize: pkg.cold.data.byteLength,
            compression: pkg.cold.compression,
            sha256: pkg.cold.sha256,
            buildId: pkg.cold.buildId,
            mode: `0${pkg.cold.mode.toString(8)}`,
          },
        }
      : {}),
    createdAt: pkg.meta.createdAt,
    toolVersion: pkg.meta.toolVersion,
    ...(pkg.meta.description !== undefined ? { description: pkg.meta.description } : {}),
    cves: pkg.meta.cves ?? [],
    severity: pkg.meta.severity ?? null,
  };
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n - 1)}…`;
}

const STATUS_TEXT: Record<SignatureVerdict['status'], string> = {
  trusted: 'trusted',
  'untrusted-signer': 'NOT TRUSTED here (add its .pub with --trust or HOTPATCH_TRUSTED_KEYS)',
  unsigned: 'unsigned (sign it with `hotpatch sign PKG --key KEYFILE`)',
  'bad-signature': 'BAD SIGNATURE: changed after signing, do not apply',
};

function inspectText(pkg: PatchPackage, size: number, verdict: SignatureVerdict, withCode: boolean): string {
  const out: string[] = [];
  const t = pkg.plan.target;
  out.push(`patch ${pkg.id}  (package format ${pkg.formatVersion}, ${size} bytes)`);
  out.push(`  target   ${clip(t.name, 40)}, ${t.size} bytes`);
  out.push(`  build-id ${t.buildId}`);
  out.push(`  created  ${pkg.meta.createdAt} by hotpatch ${clip(pkg.meta.toolVersion, 20)}`);
  if (pkg.meta.description) out.push(`  about    ${clip(pkg.meta.description.replace(/\s+/g, ' '), 69)}`);
  if (pkg.meta.cves && pkg.meta.cves.length > 0) out.push(`  fixes    ${pkg.meta.cves.join(', ')}`);
  if (pkg.meta.severity) out.push(`  severity ${pkg.meta.severity}`);
  const sig = pkg.signature;
  if (sig) {
    const name = verdict.signer?.name ?? sig.signer;
    out.push(`  signer   ${name ? `${clip(name, 40)}, ` : ''}key ${sig.keyId}`);
    const by = verdict.status === 'trusted' && verdict.signer?.source ? ` by ${verdict.signer.source}` : '';
    out.push(clip(`           ${STATUS_TEXT[verdict.status]}${by}`, 80));
  } else out.push(`  signer   none: ${STATUS_TEXT.unsigned}`);
  if (pkg.cold) {
    const c = pkg.cold;
    out.push(`  cold     fixed file, ${c.size} bytes (${c.compression} ${c.data.byteLength}), mode 0${c.mode.toString(8)}`);
    out.push(`           build-id ${c.buildId}`);
  } else out.push('  cold     no (hot patch only)');
  out.push('');
  out.push(`functions (${pkg.plan.functions.length}):`);
  out.push('  vaddr                 size    new  entry   relocs  name');
  for (const f of pkg.plan.functions) {
    const name = `${f.name}${f.file ? ` (${f.file})` : ''}`;
    out.push(
      `  ${`0x${f.vaddr.toString(16)}`.padEnd(18)} ${String(f.size).padStart(7)} ${String(f.code.byteLength).padStart(6)}  ` +
        `${f.entry.kind.padEnd(7)} ${String(f.relocations.length).padStart(6)}  ${clip(name, 80 - 55)}`,
    );
    if (withCode) {
      for (const line of decodeCode(f.code, f.relocations)) {
        const bytes = clip(line.bytes.replace(/(..)/g, '$1 ').trim(), 21);
        const text = clip(`    +${line.offset.toString(16).padStart(4, '0')}  ${bytes.padEnd(21)}  ${line.text}`, 80);
        const note = line.relocations.join('; ');
        if (!note) out.push(text);
        else if (text.length + 3 + note.length <= 80) out.push(`${text} ; ${note}`);
        else out.push(text, clip(`           ; ${note}`, 80)); // the relocation on its own line
      }
      out.push('');
    }
  }
  if (pkg.plan.data.length > 0) {
    out.push(`data (${pkg.plan.data.length}):`);
    out.push('     size  align  relocs  name');
    for (const d of pkg.plan.data) {
      out.push(`  ${String(d.bytes.byteLength).padStart(7)}  ${String(d.align).padStart(5)}  ${String(d.relocations.length).padStart(6)}  ${clip(d.name, 50)}`);
    }
  }
  return out.join('\n');
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('inspect')
    .description('show a package: id, target, functions, sizes, signer, cold payload')
    .argument('<PKG>', 'package file (.hpk)')
    .option('--code', 'also show the decoded new code of each function (offsets relative to its start)')
    .option('--trust <PUBFILE>', 'trusted public key to check the signer against (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExamples:\n  hotpatch inspect fix.hpk\n  hotpatch inspect fix.hpk --code --trust release.key.pub\n  hotpatch inspect fix.hpk --json | jq .functions\n')
    .action(async (file: string, opts: { code?: boolean; trust: string[]; json?: boolean }) => {
      const json = opts.json ?? false;
      if (opts.code) ({ decodeFunction } = await import('../../x86/index.js'));
      const { readPackageFile } = await import('../../patch/package/index.js');
      const { loadTrustedKeySet, verifyPackageSignature } = await import('../../patch/trust/index.js');
      const { pkg, bytes } = readPackageFile(file);
      const keys = loadTrustedKeySet({ trustFiles: opts.trust }).keys;
      const verdict = verifyPackageSignature(pkg, keys);
      let withCode = opts.code ?? false;
      try {
        if (json) printJson(inspectJson(pkg, bytes.byteLength, verdict, withCode));
        else say(false, inspectText(pkg, bytes.byteLength, verdict, withCode));
      } catch (e) {
        if (!(e instanceof X86Error) || !withCode) throw e;
        // Undecodable code drops the listing, never the rest of the report.
        progress(`hotpatch: cannot decode the new code (${e.message}); showing the package without it`);
        withCode = false;
        if (json) printJson(inspectJson(pkg, bytes.byteLength, verdict, false));
        else say(false, inspectText(pkg, bytes.byteLength, verdict, false));
      }
    });
}
