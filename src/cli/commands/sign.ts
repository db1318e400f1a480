/** `hotpatch sign PKG --key KEYFILE`: add (or replace) the package's ed25519 signature, atomically. */
import type { Command } from 'commander';
import { printJson, progress, say } from '../output.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('sign')
    .description('sign a package with an ed25519 key (rewrites PKG in place, atomically; the patch id does not change)')
    .argument('<PKG>', 'package file (.hpk)')
    .requiredOption('-k, --key <KEYFILE>', 'private key written by `hotpatch keygen`')
    .option('--signer <NAME>', 'signer name to embed (default: the comment of KEYFILE.pub)')
    .option('--json', 'print one JSON document on stdout')
    .addHelpText('after', '\nExample:\n  hotpatch sign fix.hpk --key release.key\n')
    .action(async (file: string, opts: { key: string; signer?: string; json?: boolean }) => {
      const { encodePackage, readPackageFile, writeFileAtomic } = await import('../../patch/package/index.js');
      const { readPrivateKeyFile, signPackage, verifyPackageSignature } = await import('../../patch/trust/index.js');
      const json = opts.json ?? false;
      const key = readPrivateKeyFile(opts.key);
      const { pkg } = readPackageFile(file);
      if (pkg.signature) {
        const before = verifyPackageSignature(pkg, []);
        progress(
          `hotpatch: replacing the existing signature by key ${pkg.signature.keyId}` +
            (before.status === 'bad-signature' ? ' (it did not match the content: check where this package came from)' : ''),
        );
      }
      const signed = signPackage(pkg, key, opts.signer === undefined ? {} : { signer: opts.signer });
      writeFileAtomic(file, encodePackage(signed));
      const s = signed.signature!;
      if (json) printJson({ file, id: signed.id, keyId: s.keyId, signer: s.signer ?? null });
      say(json, `signed ${file} (patch ${signed.id}) with key ${s.keyId}${s.signer ? ` (${s.signer})` : ''}`);
    });
}
