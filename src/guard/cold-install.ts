/**
 * Recognising hotpatch's own cold installs. `apply --cold` renames the fixed build over a file and
 * keeps the original inode as a hard link `.NAME.hotpatch-PATCHID.orig` beside it (see
 * src/patch/updater/cold.ts), so processes started before the install map a "deleted" file. That
 * mapping is the kept original, not injected code: its inode is the backup's inode (compared by
 * device and inode number, so a file merely named like a backup is not enough).
 */
import { lstatSync, readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Mapping } from '../process/index.js';

/** `major:minor` in hex as /proc/PID/maps prints a device number. */
function deviceText(dev: number): string {
  const major = (dev >>> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

/** The cold-install backup that holds the (deleted) mapped file's inode, or undefined. */
export function coldInstallBackupOf(mp: Mapping): string | undefined {
  if (!mp.isFile || !mp.deleted || mp.path === '' || !mp.path.startsWith('/')) return undefined;
  const dir = dirname(mp.path);
  const prefix = `.${basename(mp.path)}.hotpatch-`;
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith(prefix) && n.endsWith('.orig'));
  } catch {
    return undefined;
  }
  for (const n of names) {
    try {
      const st = lstatSync(join(dir, n));
      if (st.isFile() && st.ino === mp.inode && deviceText(st.dev) === mp.dev) return join(dir, n);
    } catch {
      // vanished meanwhile: not this one
    }
  }
  return undefined;
}
