/**
 * `hotpatch store add PKG | list | remove ID [--store DIR] [--trust PUBFILE]...`: the patch store
 * that `hotpatch agent` keeps applied (see src/store).
 */
import type { Command } from 'commander';
import { collect } from '../options.js';
import { printJson, say } from '../output.js';
import type { SetExitCode } from './index.js';

interface StoreCliOptions {
  store?: string;
  trust: string[];
  json?: boolean;
}

const STORE_HELP = 'store directory (default: $HOTPATCH_STORE, else /var/lib/hotpatch/store)';
const TRUST_HELP = 'trusted public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)';

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  const store = program
    .command('store')
    .description('the patch store the agent keeps applied: add (verified, atomic), list, remove (withdraw everywhere)')
    .addHelpText('after', '\nExamples:\n  hotpatch store add fix.hpk\n  hotpatch store list --json\n  hotpatch store remove 0123456789abcdef\n');

  store
    .command('add')
    .description('verify PKG (signed by a trusted key) and copy it into the store atomically')
    .argument('<PKG>', 'package file (.hpk)')
    .option('--store <DIR>', STORE_HELP)
    .option('--trust <PUBFILE>', TRUST_HELP, collect, [] as string[])
    .option('--json', 'print one JSON document on stdout')
    .action(async (file: string, opts: StoreCliOptions) => {
      const { storeAdd } = await import('../../store/index.js');
      const r = storeAdd(file, { ...(opts.store ? { dir: opts.store } : {}), trustFiles: opts.trust });
      if (opts.json) printJson(r);
      say(opts.json ?? false, `${r.status === 'added' ? 'added' : 'already stored:'} patch ${r.id} for ${r.target.name} (build-id ${r.target.buildId}), signed by ${r.signer}, as ${r.path}`);
    });

  store
    .command('list')
    .description('the stored packages (each verified again), withdrawn patches, and files that fail the checks')
    .option('--store <DIR>', STORE_HELP)
    .option('--trust <PUBFILE>', TRUST_HELP, collect, [] as string[])
    .option('--json', 'print one JSON document on stdout')
    .action(async (opts: StoreCliOptions) => {
      const { readStore } = await import('../../store/index.js');
      const c = readStore({ ...(opts.store ? { dir: opts.store } : {}), trustFiles: opts.trust });
      const packages = c.packages.map((p) => ({
        id: p.id, path: p.path, sha256: p.sha256, target: { name: p.pkg.plan.target.name, buildId: p.pkg.plan.target.buildId },
        functions: p.pkg.plan.functions.map((f) => f.name), signer: p.verdict.signer ? { keyId: p.verdict.signer.keyId, name: p.verdict.signer.name ?? null } : null,
        description: p.pkg.meta.description ?? null, cves: p.pkg.meta.cves ?? [], severity: p.pkg.meta.severity ?? null,
        addedAt: new Date(p.addedAt).toISOString(), cold: p.pkg.cold !== undefined,
      }));
      if (opts.json) {
        printJson({ store: c.dir, packages, withdrawn: c.withdrawn, invalid: c.invalid });
        return;
      }
      if (packages.length === 0) say(false, `store ${c.dir} holds no packages`);
      for (const p of packages) {
        const meta = [p.severity, ...p.cves].filter((x) => x).join(' ');
        say(false, `${p.id}  ${p.target.name} ${p.target.buildId.slice(0, 12)}  ${p.functions.join(', ')}${meta ? `  ${meta}` : ''}${p.description ? `  "${p.description}"` : ''}`);
      }
      for (const w of c.withdrawn) say(false, `${w.id}  withdrawn ${w.withdrawnAt}`);
      for (const b of c.invalid) say(false, `invalid: ${b.file}: ${b.reason} [${b.code}]`);
    });

  store
    .command('remove')
    .description('withdraw patch ID: delete it from the store and leave a tombstone so the agent removes it from every process')
    .argument('<ID>', 'patch id (16 hex digits)')
    .option('--store <DIR>', STORE_HELP)
    .option('--json', 'print one JSON document on stdout')
    .action(async (id: string, opts: StoreCliOptions) => {
      const { storeDir, storeRemove } = await import('../../store/index.js');
      const r = storeRemove(id, opts.store ? { dir: opts.store } : {});
      if (opts.json) printJson({ ...r, store: storeDir(opts.store) });
      say(opts.json ?? false, `${r.status === 'withdrawn' ? 'withdrew' : 'already withdrawn:'} patch ${r.id} (the agent removes it from every process)`);
    });
}
