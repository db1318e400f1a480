/**
 * Fault injection (HOTPATCH_FAULT, HOTPATCH_FAULT_TARGET, HOTPATCH_FAULT_INJECT) exists for the
 * crash-safety tests only. An installed tool must never kill itself or a target because a variable
 * happens to be set in its environment, so the switches work only in a development checkout: the
 * package root beside this module holds the test suite (`test/helpers/native.ts`), which neither
 * `npm pack` nor the Debian package ships.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let allowed: boolean | undefined;

/** Whether the fault-injection switches are honoured (memoised: one file-system look per process). */
export function faultInjectionAllowed(): boolean {
  if (allowed === undefined) {
    allowed = false;
    // src/internal (under vitest) or dist/src/internal (built): the root is 2 or 3 levels up.
    for (let dir = dirname(fileURLToPath(import.meta.url)), i = 0; i < 4; i++, dir = dirname(dir)) {
      if (existsSync(join(dir, 'package.json'))) {
        allowed = existsSync(join(dir, 'test', 'helpers', 'native.ts'));
        break;
      }
    }
  }
  return allowed;
}
