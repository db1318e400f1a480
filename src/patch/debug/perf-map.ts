/**
 * `/tmp/perf-PID.map`: the symbol file perf reads for code in anonymous executable memory (JIT
 * code; tools/perf/Documentation/jit-interface.txt): one `START SIZE NAME` line per symbol, START
 * and SIZE in hex without 0x. Our lines are named `FUNCTION [hotpatch PATCHID]`.
 *
 * /tmp is writable by everyone and we run as root: the file is written by writeFileAtomic (a new
 * file created O_CREAT|O_EXCL|O_NOFOLLOW beside it, renamed over it; an existing symbolic link,
 * non-regular file or file of another user is refused, never written through), mode 0644.
 * Lines of another writer (a JIT in the same process) are kept; only our own are replaced — read
 * back only from a regular file with one link owned by root or us (never another file's contents).
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { trustedOwners, writeFileAtomic } from '../../fs/index.js';
import type { DebugInfo } from './collect.js';

/** The marker that makes a line ours. */
const OURS = / \[hotpatch [^\]]*\]$/;
/** Largest map file we read back (a JIT's map can be big; beyond this we do not merge). */
const MAX_EXISTING = 64 << 20;

/** The default map path perf looks for. */
export function perfMapPath(pid: number, dir = '/tmp'): string {
  return `${dir}/perf-${pid}.map`;
}

/** Our lines for `info`, lowest address first. */
export function perfMapLines(info: DebugInfo): string[] {
  const syms = info.patches.flatMap((p) => p.functions.map((f) => ({ ...f, patch: p.id })));
  syms.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  // A name holds no newline (perf reads line by line); function names and ids never do.
  return syms.filter((s) => s.size > 0n).map((s) => `${s.address.toString(16)} ${s.size.toString(16)} ${s.name} [hotpatch ${s.patch}]`.replace(/[\r\n]/g, '?'));
}

/** The lines of an existing map that are not ours: read without following a link, regular files only. */
function foreignLines(path: string): string[] {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return []; // absent, or a link (writeFileAtomic refuses it with the reason)
  }
  try {
    const st = fstatSync(fd);
    // Only a file root (or we) wrote alone: a hard link planted to another file must not have its
    // contents copied into a world-readable map.
    if (!st.isFile() || st.nlink !== 1 || !trustedOwners().has(st.uid) || st.size > MAX_EXISTING) return [];
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString('latin1').split('\n').filter((l) => l !== '' && !OURS.test(l));
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes the perf map of `info` to `path` (default /tmp/perf-PID.map). Returns the path and the
 * number of our lines. Throws UnsafePathError PATH_UNSAFE when `path` is a link, not a regular
 * file, or another user's file.
 */
export function writePerfMap(info: DebugInfo, path = perfMapPath(info.pid)): { path: string; symbols: number } {
  const ours = perfMapLines(info);
  const lines = [...foreignLines(path), ...ours];
  // latin1 both ways: another writer's bytes come back unchanged.
  writeFileAtomic(path, Buffer.from(lines.map((l) => `${l}\n`).join(''), 'latin1'), { mode: 0o644, what: 'perf map' });
  return { path, symbols: ours.length };
}
