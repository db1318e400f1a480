/**
 * The version of this hotpatch, read once from the package.json shipped beside `dist/` (in a
 * checkout, the npm tarball and the Debian package alike), so `--version` and the guard's
 * `hotpatch_build_info` never disagree with the package.
 */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** `version` of hotpatch's package.json, or `unknown` when it cannot be read. */
export function hotpatchVersion(): string {
  if (cached !== undefined) return cached;
  // dist/src/version.js → ../../package.json; src/version.ts (vitest) → ../package.json.
  for (const rel of ['../../package.json', '../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'hotpatch' && typeof pkg.version === 'string') return (cached = pkg.version);
    } catch {
      /* try the next place */
    }
  }
  return (cached = 'unknown');
}
