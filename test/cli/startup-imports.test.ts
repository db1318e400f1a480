/**
 * Start-up cost is mostly module loading: `--help`, `--version` and the help of every command must
 * not load the ELF/DWARF reader, the x86 decoder, the FFI, the engine, the package codec, crypto or
 * the HTTP server (each command's action imports what it needs). `list` may read records but not
 * load the x86 decoder or the FFI. The loaded set is recorded by a module-resolution hook.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const CLI = join(REPO_ROOT, 'dist/src/cli/main.js');
const dir = mkdtempSync(join(tmpdir(), 'hp-startup-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The hook appends every resolved URL to the file named by HP_LOADED.
const hook = join(dir, 'hook.mjs');
writeFileSync(hook, `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(process.env.HP_LOADED, r.url + '\\n');
  return r;
}
`);
const register = join(dir, 'register.mjs');
writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hook).href)});\n`);

let run = 0;
async function loadedBy(args: string[]): Promise<string[]> {
  const log = join(dir, `loaded-${run++}`);
  writeFileSync(log, '');
  await promisify(execFile)('node', ['--import', pathToFileURL(register).href, CLI, ...args], { env: { ...process.env, HP_LOADED: log } }).catch(() => undefined);
  return [...new Set(readFileSync(log, 'utf8').split('\n').filter((l) => l !== ''))];
}

/** Module groups the light commands must not load. */
const HEAVY = [/\/dist\/src\/elf\/(?!debug\.js)/, /\/dist\/src\/x86\//, /\/dist\/src\/process\//, /\/dist\/src\/patch\/(engine|builder|linker|updater|trust)\//, /\/dist\/src\/patch\/package\/(?!metadata\.js)/, /\/dist\/src\/guard\/(?!finding|defaults|log)/, /iced-x86/, /koffi/, /^node:(crypto|http|zlib)$/];

describe('CLI start-up loads only what the command needs', () => {
  for (const args of [['--help'], ['--version'], ['build', '--help'], ['guard', '--help'], ['verify', '--help'], ['apply', '--help'], ['inspect', '--help'], ['symbols', '--help']]) {
    it(`hotpatch ${args.join(' ')}`, async () => {
      const loaded = await loadedBy(args);
      expect(loaded.some((u) => u.endsWith('/dist/src/cli/main.js'))).toBe(true); // the hook saw the CLI
      expect(loaded.filter((u) => HEAVY.some((h) => h.test(u)))).toEqual([]);
    }, 60_000);
  }

  it('hotpatch list reads records without the x86 decoder or the FFI', async () => {
    const loaded = await loadedBy(['list', '--json']);
    expect(loaded.some((u) => u.includes('/dist/src/patch/engine/list.js'))).toBe(true);
    expect(loaded.filter((u) => /iced-x86|koffi|\/dist\/src\/x86\/|\/dist\/src\/process\/control\//.test(u))).toEqual([]);
  }, 60_000);
});
