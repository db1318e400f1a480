/**
 * Identity of the files modules are mapped from: content hashes (cached per inode and change
 * time), Debian package checksums (/var/lib/dpkg/info/*.md5sums, indexed once) and the identity
 * first seen (kept in the guard's state). The mapped file itself can be the tampered thing: a
 * changed file changes every process that maps it, and memory still equals the (changed) file.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readSync, type Stats } from 'node:fs';
import { join } from 'node:path';

/** Content identity of a file. */
export interface FileIdentity {
  sha256: string;
  md5: string;
  size: number;
}

/** Cache key: a file whose inode, size and change times are unchanged has unchanged content. */
export function statKey(st: Stats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

const CHUNK = 1 << 20;

/** Hashes a file (sha256 and md5 in one pass) from an open descriptor. */
export function hashFd(fd: number): FileIdentity {
  const sha = createHash('sha256');
  const md5 = createHash('md5');
  const buf = Buffer.allocUnsafe(CHUNK);
  let size = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, CHUNK, size);
    if (n <= 0) break;
    const part = buf.subarray(0, n);
    sha.update(part);
    md5.update(part);
    size += n;
  }
  return { sha256: sha.digest('hex'), md5: md5.digest('hex'), size };
}

/** Hashes files, remembering the result per (dev, inode, size, mtime, ctime). */
export class IdentityCache {
  private readonly byKey = new Map<string, FileIdentity>();
  /** Bytes hashed so far (for metrics). */
  bytesHashed = 0;

  /**
   * Identity of the file at `path` (use a /proc/PID/map_files path to get the mapped inode even when
   * the name now points elsewhere).
   */
  identify(path: string): FileIdentity {
    const fd = openSync(path, 'r');
    try {
      const key = statKey(fstatSync(fd));
      const hit = this.byKey.get(key);
      if (hit !== undefined) return hit;
      const id = hashFd(fd);
      this.bytesHashed += id.size;
      this.byKey.set(key, id);
      return id;
    } finally {
      closeSync(fd);
    }
  }
}

/** One entry of a Debian package's md5sums file. */
export interface PackageChecksum {
  package: string;
  md5: string;
}

/** Index of every file checksum recorded by dpkg, keyed by absolute path. */
export class DpkgChecksums {
  private index: Map<string, PackageChecksum> | null = null;

  constructor(private readonly infoDir = '/var/lib/dpkg/info') {}

  private load(): Map<string, PackageChecksum> {
    if (this.index !== null) return this.index;
    const index = new Map<string, PackageChecksum>();
    let names: string[] = [];
    try {
      names = readdirSync(this.infoDir).filter((n) => n.endsWith('.md5sums'));
    } catch {
      // Not a Debian system: no package checksums.
    }
    for (const name of names) {
      const pkg = name.slice(0, -'.md5sums'.length);
      let text: string;
      try {
        text = readFileSync(join(this.infoDir, name), 'latin1');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) {
        // "<32 hex>  <path without leading slash>"
        if (line.length < 35 || line[32] !== ' ') continue;
        const md5 = line.slice(0, 32);
        const path = `/${line.slice(34)}`;
        index.set(path, { package: pkg, md5 });
      }
    }
    this.index = index;
    return index;
  }

  /**
   * The recorded checksum of `path`, or undefined when no package owns it. On merged-/usr systems
   * the kernel shows /usr/lib/... while packages may record /lib/..., so both spellings are tried.
   */
  lookup(path: string): PackageChecksum | undefined {
    const index = this.load();
    const direct = index.get(path);
    if (direct !== undefined) return direct;
    for (const dir of ['/lib', '/lib64', '/bin', '/sbin', '/libx32', '/lib32']) {
      if (path.startsWith(`/usr${dir}/`)) return index.get(path.slice(4));
      if (path.startsWith(`${dir}/`)) return index.get(`/usr${path}`);
    }
    return undefined;
  }

  /** Number of files indexed (loads the index). */
  get size(): number {
    return this.load().size;
  }
}
