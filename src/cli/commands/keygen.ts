/** `hotpatch keygen -o KEYFILE`: a new ed25519 signing key (KEYFILE, mode 0600) and KEYFILE.pub. */
import type { Command } from 'commander';
import { hostname, userInfo } from 'node:os';
import { printJson, say } from '../output.js';
import type { SetExitCode } from './index.js';

function defaultComment(): string {
  try {
    return `${userInfo().username}@${hostname()}`;
  } catch {
    return hostname();
  }
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('keygen')
    .description('create an ed25519 signing key: KEYFILE (private, mode 0600) and KEYFILE.pub')
    .requiredOption('-o, --output <KEYFILE>', 'private key file to write; the public key goes to KEYFILE.pub')
    .option('-c, --comment <TEXT>', 'signer name stored in KEYFILE.pub and shown by inspect/list (default user@host)')
    .option('-f, --force', 'overwrite existing key files')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText(
      'after',
      `
Examples:
  hotpatch keygen -o ~/.hotpatch/release.key -c "Release team"
  hotpatch sign fix.hpk --key ~/.hotpatch/release.key
  # on the machines that apply patches:
  cp ~/.hotpatch/release.key.pub /etc/hotpatch/trusted.d/
`,
    )
    .action(async (opts: { output: string; comment?: string; force?: boolean; json?: boolean }) => {
      const { writeKeyFiles } = await import('../../patch/trust/index.js');
      const json = opts.json ?? false;
      const r = writeKeyFiles(opts.output, { comment: opts.comment ?? defaultComment(), force: opts.force ?? false });
      if (json) printJson({ keyFile: r.keyFile, publicKeyFile: r.publicKeyFile, keyId: r.keyId });
      say(json, `wrote private key ${r.keyFile} (mode 0600, keep it secret)`);
      say(json, `wrote public key  ${r.publicKeyFile} (key id ${r.keyId})`);
      say(json, `trust it where patches are applied: --trust ${r.publicKeyFile}, HOTPATCH_TRUSTED_KEYS, or /etc/hotpatch/trusted.d/`);
    });
}
