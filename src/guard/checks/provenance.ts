/**
 * Structure 6 (module list), provenance of the loaded modules: a module is only as trustworthy as
 * the places its file came from. Reported:
 * - `untrusted-path`: the module's file, or a directory on its path, can be written by someone
 *   other than root and the process' own user — world-writable, group-writable by a group with
 *   other members, or owned by another user (who can chmod it) — or the module was loaded from a
 *   world-writable directory (/tmp, /dev/shm, ...; sticky or not: anyone may have planted the
 *   name). A sticky world-writable directory higher up the path is fine when the entry below it
 *   belongs to root or the process' user (others cannot rename it). This holds whatever the
 *   content: a byte-identical copy of a system library loaded from /tmp is reported too, and a
 *   first-seen identity (identity.ts) does not make such a file trusted.
 * - `late-module-thread`: a module no package owns, loaded after start-up (not reachable through
 *   DT_NEEDED from the executable, the loader and LD_PRELOAD), in which a thread other than the
 *   main thread runs (its pc, or a return address on its stack, is in the module's code) — the
 *   state an injected dlopen() leaves when the library's constructor starts a thread.
 * Severity: high for a privileged process (a 0 among its uids, or any effective capability),
 * medium otherwise (the code of one user can be changed by another one, not root).
 * Read-only: stat(2) of paths, /proc/PID/task/TID/syscall, /proc/PID/mem.
 */
import { readFileSync, readdirSync, statSync, type Stats } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Module } from '../../process/index.js';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding, type Severity } from '../finding.js';

const S_IWGRP = 0o020;
const S_IWOTH = 0o002;
const S_ISVTX = 0o1000;

interface Accounts {
  readAt: number;
  userNames: Map<number, string>;
  /** gid → uids of its members (supplementary from /etc/group, primary from /etc/passwd). */
  members: Map<number, Set<number>>;
}

let accounts: Accounts | undefined;

/** /etc/passwd and /etc/group, re-read at most once a minute. */
function readAccounts(): Accounts {
  if (accounts !== undefined && Date.now() - accounts.readAt < 60_000) return accounts;
  const userNames = new Map<number, string>();
  const byName = new Map<string, number>();
  const members = new Map<number, Set<number>>();
  const add = (gid: number, uid: number) => {
    const s = members.get(gid) ?? new Set<number>();
    s.add(uid);
    members.set(gid, s);
  };
  const lines = (f: string) => {
    try {
      return readFileSync(f, 'utf8').split('\n');
    } catch {
      return [];
    }
  };
  for (const l of lines('/etc/passwd')) {
    const p = l.split(':');
    if (p.length < 4) continue;
    const uid = Number(p[2]);
    const gid = Number(p[3]);
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid)) continue;
    userNames.set(uid, p[0]!);
    byName.set(p[0]!, uid);
    add(gid, uid);
  }
  for (const l of lines('/etc/group')) {
    const p = l.split(':');
    if (p.length < 4) continue;
    const gid = Number(p[2]);
    if (!Number.isSafeInteger(gid)) continue;
    for (const n of p[3]!.split(',')) {
      const uid = byName.get(n.trim());
      if (uid !== undefined) add(gid, uid);
    }
  }
  accounts = { readAt: Date.now(), userNames, members };
  return accounts;
}

function userName(uid: number): string {
  return readAccounts().userNames.get(uid) ?? `uid ${uid}`;
}

/** Why someone other than `trusted` can write (or re-permission) this file or directory, or null. */
function writableByOthers(st: Stats, trusted: ReadonlySet<number>, isParent: boolean, what: string): string | null {
  if (!trusted.has(st.uid)) return `${what} is owned by ${userName(st.uid)}`;
  if ((st.mode & S_IWOTH) !== 0) {
    if (isParent) return `${what} is world-writable${(st.mode & S_ISVTX) !== 0 ? ' (sticky: anyone may have planted the name)' : ''}`;
    return `${what} is world-writable`;
  }
  if ((st.mode & S_IWGRP) !== 0) {
    const others = [...(readAccounts().members.get(st.gid) ?? [])].filter((u) => !trusted.has(u));
    if (others.length > 0) return `${what} is writable by group ${st.gid} (members ${others.map(userName).join(', ')})`;
  }
  return null;
}

/**
 * The reason a module file at `path` is not safe from users other than `trusted`, or null. Walks
 * from the file up to /: the file and its directory must be safe; a directory higher up may be
 * world-writable only with the sticky bit and a trusted owner of the entry below it.
 */
export function untrustedPath(path: string, fileStat: Stats, trusted: ReadonlySet<number>): string | null {
  const own = writableByOthers(fileStat, trusted, false, 'the file');
  if (own !== null) return own;
  let child = path;
  let childStat = fileStat;
  let dir = dirname(path);
  for (let depth = 0; depth < 64; depth++) {
    let st: Stats;
    try {
      st = statSync(dir);
    } catch {
      return null; // the path no longer exists (renamed meanwhile): nothing to judge by
    }
    const why = writableByOthers(st, trusted, depth === 0, `directory ${dir}`);
    if (why !== null) {
      // Higher up, a sticky world-writable directory (like /tmp) protects entries of trusted owners.
      const stickySafe = depth > 0 && (st.mode & S_ISVTX) !== 0 && trusted.has(st.uid) && trusted.has(childStat.uid) && (st.mode & S_IWOTH) !== 0 && why.includes('world-writable');
      if (!stickySafe) return depth === 0 && why.includes('world-writable') ? `loaded from a world-writable directory: ${why}` : `${why} (it can replace ${child})`;
    }
    if (dir === '/') return null;
    child = dir;
    childStat = st;
    dir = dirname(dir);
  }
  return null;
}

/** Whether the process holds privileges: a 0 among its uids or any effective capability. */
function privileged(ctx: ProcessContext): boolean {
  const u = ctx.status.uid;
  return u.real === 0 || u.effective === 0 || u.saved === 0 || ctx.status.capEff !== 0n;
}

/** Modules reachable at start-up: the executable, the loader, LD_PRELOAD and their DT_NEEDED closure. */
export function startupModules(ctx: ProcessContext): Set<Module> {
  const mods = ctx.modules.filter((m) => m.kind !== 'vdso');
  const byName = new Map<string, Module>();
  for (const m of mods) {
    byName.set(m.name, m);
    const so = ctx.image(m)?.elf.dynamic?.soname;
    if (so !== undefined) byName.set(so, m);
  }
  const seen = new Set<Module>();
  const queue: Module[] = mods.filter((m) => m.kind === 'executable' || m.kind === 'loader');
  for (const p of (ctx.environ.get('LD_PRELOAD') ?? '').split(/[ :]/)) {
    const m = p === '' ? undefined : mods.find((x) => x.path === p) ?? byName.get(basename(p));
    if (m !== undefined) queue.push(m);
  }
  try {
    for (const p of readFileSync('/etc/ld.so.preload', 'utf8').split(/\s+/)) {
      const m = p === '' ? undefined : mods.find((x) => x.path === p) ?? byName.get(basename(p));
      if (m !== undefined) queue.push(m);
    }
  } catch {
    // no /etc/ld.so.preload
  }
  while (queue.length > 0) {
    const m = queue.shift()!;
    if (seen.has(m)) continue;
    seen.add(m);
    for (const n of ctx.image(m)?.elf.dynamic?.needed ?? []) {
      const d = byName.get(n) ?? byName.get(basename(n));
      if (d !== undefined && !seen.has(d)) queue.push(d);
    }
  }
  return seen;
}

/** How far up a thread's stack return addresses are looked for. */
const STACK_SCAN_BYTES = 64 * 1024;

/** Threads other than the main one whose pc, or a word on their stack, lies in `mod`'s code. */
function threadsIn(ctx: ProcessContext, mod: Module): number[] {
  const code = mod.mappings.filter((m) => m.protection.execute);
  const inCode = (v: bigint) => code.some((m) => v >= m.start && v < m.end);
  let tids: number[];
  try {
    tids = readdirSync(`/proc/${ctx.pid}/task`).map(Number).filter((t) => t !== ctx.pid);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const tid of tids) {
    let text: string;
    try {
      text = readFileSync(`/proc/${ctx.pid}/task/${tid}/syscall`, 'utf8').trim();
    } catch {
      continue;
    }
    // "nr a1 a2 a3 a4 a5 a6 sp pc" while blocked in a system call; "running" or "-1 sp pc" else.
    const f = text.split(' ');
    if (f.length < 3) continue;
    const sp = BigInt(f[f.length - 2]!);
    const pc = BigInt(f[f.length - 1]!);
    if (inCode(pc)) {
      out.push(tid);
      continue;
    }
    const stack = ctx.mappingAt(sp);
    if (stack === undefined) continue;
    const len = Number(stack.end - sp < BigInt(STACK_SCAN_BYTES) ? stack.end - sp : BigInt(STACK_SCAN_BYTES)) & ~7;
    let words: Uint8Array;
    try {
      words = ctx.proc.readMemoryPartial(sp, len);
    } catch {
      continue;
    }
    const dv = new DataView(words.buffer, words.byteOffset, words.byteLength & ~7);
    for (let o = 0; o + 8 <= dv.byteLength; o += 8) {
      if (inCode(dv.getBigUint64(o, true))) {
        out.push(tid);
        break;
      }
    }
  }
  return out;
}

/** Structure 6, provenance: modules from places others can write, late modules running threads. */
export function checkProvenance(ctx: ProcessContext): Finding[] {
  const out: Finding[] = [];
  const u = ctx.status.uid;
  const trusted = new Set<number>([0, u.real, u.effective, u.saved, u.fs].filter((x) => x >= 0));
  const severity: Severity = privileged(ctx) ? 'high' : 'medium';
  let startup: Set<Module> | undefined;
  for (const mod of ctx.modules) {
    if (mod.kind === 'vdso' || mod.deleted || mod.path.startsWith('/memfd:') || !mod.path.startsWith('/')) continue;
    if (!mod.mappings.some((m) => m.protection.execute)) continue;
    let st: Stats;
    try {
      st = statSync(mod.mapFilesPath ?? mod.path);
    } catch {
      continue;
    }
    const why = untrustedPath(mod.path, st, trusted);
    if (why !== null) {
      out.push(makeFinding({
        pid: ctx.pid, code: 6, kind: 'untrusted-path', severity, module: mod.path, address: mod.base,
        detail: `module ${mod.path} comes from a place others can write: ${why}; whoever can write there controls code running in this ${severity === 'high' ? 'privileged ' : ''}process (RPATH/RUNPATH hijack, injected dlopen), whatever the file's content or first-seen identity`,
      }));
    }
    if (ctx.caches.dpkg.lookup(mod.path) !== undefined || mod.kind !== 'library') continue;
    startup ??= startupModules(ctx);
    if (startup.has(mod)) continue;
    const tids = threadsIn(ctx, mod);
    if (tids.length === 0) continue;
    out.push(makeFinding({
      pid: ctx.pid, code: 6, kind: 'late-module-thread', severity, module: mod.path, address: mod.base,
      detail: `module ${mod.path}, which no package owns, was loaded after start-up (no DT_NEEDED path from the executable or LD_PRELOAD leads to it) and thread(s) ${tids.join(', ')} run its code: what an injected dlopen() of a library whose constructor starts a thread leaves; allow it by policy if this program loads plugins`,
    }));
  }
  return out;
}
