/**
 * Separate debug files: where a distribution keeps the symbols of the stripped files it ships.
 * GDB's convention: `DIR/.build-id/XX/YYYY….debug`, XX the first byte of the GNU build-id in hex
 * and YYYY… the rest (DIR is /usr/lib/debug, filled by the -dbgsym / -debuginfo packages).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** Where debug files are looked for by default. */
export const DEFAULT_DEBUG_DIRS: readonly string[] = ['/usr/lib/debug'];

/** The path of the debug file of `buildId` under `dir` (whether or not it exists). */
export function debugFilePath(dir: string, buildId: string): string {
  if (!/^[0-9a-f]{4,}$/i.test(buildId)) throw new RangeError(`debugFilePath: build-id must be hex, got ${JSON.stringify(buildId)}`);
  const id = buildId.toLowerCase();
  return join(dir, '.build-id', id.slice(0, 2), `${id.slice(2)}.debug`);
}

/** The first existing debug file of `buildId` under `dirs`, or undefined. */
export function findDebugFile(buildId: string, dirs: readonly string[] = DEFAULT_DEBUG_DIRS): string | undefined {
  for (const d of dirs) {
    const p = debugFilePath(d, buildId);
    if (existsSync(p)) return p;
  }
  return undefined;
}
