/**
 * The dynamic linker's module list as the target sees it: r_debug (found through DT_DEBUG of the
 * main executable, else the loader's `_r_debug` symbol) → link_map chain, and with
 * r_debug_extended (glibc ≥ 2.35, r_version ≥ 2) the other dlmopen namespaces through r_next.
 * Read from memory only (no ptrace).
 */
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { DT_DEBUG } from '../../elf/index.js';
import type { Module } from '../../process/index.js';
import type { ProcessContext } from '../context.js';

/** One struct link_map of the target. */
export interface LinkMapEntry {
  /** l_addr: load bias. */
  addr: bigint;
  /** l_name (as the loader wrote it: "" for the executable, the PT_INTERP path for the loader). */
  name: string;
  /** l_ld: run-time address of the module's dynamic section. */
  ld: bigint;
  /** Address of the link_map structure itself. */
  self: bigint;
  /** dlmopen namespace index (0: the main namespace). */
  namespace: number;
  /** Position in its namespace's list. */
  index: number;
}

export interface LinkMapResult {
  entries: LinkMapEntry[];
  /** Address of r_debug, or null when the process has no dynamic linker (static executable). */
  rDebug: bigint | null;
  /** r_state of the main namespace: 0 RT_CONSISTENT, 1 RT_ADD, 2 RT_DELETE. */
  state: number;
  /** Why the list could not be read, when entries is empty for a dynamic process. */
  problem?: string;
}

const MAX_ENTRIES = 8192;
const MAX_NAMESPACES = 32;

function u64(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset + off, 8).getBigUint64(0, true);
}

function readCString(ctx: ProcessContext, address: bigint, max = 4096): string {
  if (address === 0n) return '';
  const b = ctx.proc.readMemoryPartial(address, max);
  const nul = b.indexOf(0);
  return Buffer.from(b.buffer, b.byteOffset, nul < 0 ? b.length : nul).toString('utf8');
}

/** Finds &r_debug: DT_DEBUG of the main executable's dynamic section in memory, else `_r_debug` of the loader. */
function findRDebug(ctx: ProcessContext): bigint | null {
  const main = ctx.modules.find((m) => m.kind === 'executable');
  if (main !== undefined) {
    const img = ctx.image(main);
    const dynVaddr = img?.dynamicVaddr;
    if (img && dynVaddr !== undefined && img.elf.dynamic !== null) {
      const n = img.elf.dynamic.entries.length;
      try {
        const raw = ctx.proc.readMemory(main.loadBias + dynVaddr, n * 16);
        for (let i = 0; i < n; i++) {
          const tag = u64(raw, i * 16);
          if (tag === BigInt(DT_DEBUG)) {
            const v = u64(raw, i * 16 + 8);
            if (v !== 0n) return v;
          }
          if (tag === 0n) break;
        }
      } catch {
        // fall through to the loader's symbol
      }
    }
  }
  const loader = ctx.modules.find((m) => m.kind === 'loader');
  if (loader !== undefined) {
    const s = ctx.image(loader)?.elf.findSymbol('_r_debug', { table: 'dynsym' });
    if (s !== undefined) return loader.loadBias + s.value;
  }
  return null;
}

/** Reads the link_map lists of every namespace. Memoised per context. */
export function readLinkMap(ctx: ProcessContext): LinkMapResult {
  return ctx.memo('linkmap', () => {
    const rDebug = findRDebug(ctx);
    if (rDebug === null) return { entries: [], rDebug: null, state: 0 };
    const entries: LinkMapEntry[] = [];
    let state = 0;
    let ns = 0;
    let r: bigint = rDebug;
    const seen = new Set<bigint>();
    try {
      while (r !== 0n && ns < MAX_NAMESPACES) {
        // struct r_debug { int r_version; link_map *r_map; ElfW(Addr) r_brk; int r_state; ElfW(Addr) r_ldbase; }
        // struct r_debug_extended { struct r_debug base; struct r_debug_extended *r_next; }
        const rd = ctx.proc.readMemory(r, 48);
        const version = new DataView(rd.buffer, rd.byteOffset, 4).getInt32(0, true);
        if (ns === 0) state = new DataView(rd.buffer, rd.byteOffset + 24, 4).getInt32(0, true);
        let lm = u64(rd, 8);
        let index = 0;
        while (lm !== 0n && !seen.has(lm) && entries.length < MAX_ENTRIES) {
          seen.add(lm);
          // struct link_map { l_addr; char *l_name; ElfW(Dyn) *l_ld; l_next; l_prev; }
          const b = ctx.proc.readMemory(lm, 40);
          entries.push({ addr: u64(b, 0), name: readCString(ctx, u64(b, 8)), ld: u64(b, 16), self: lm, namespace: ns, index: index++ });
          lm = u64(b, 24);
        }
        r = version >= 2 ? u64(rd, 40) : 0n;
        ns++;
      }
    } catch (e) {
      return { entries, rDebug, state, problem: `cannot read link_map: ${(e as Error).message}` };
    }
    return { entries, rDebug, state };
  });
}

/** The link_map entry describing `mod` (same load bias and dynamic section inside the module), if any. */
export function linkMapEntryOf(ctx: ProcessContext, mod: Module, entries: readonly LinkMapEntry[]): LinkMapEntry | undefined {
  const dynVaddr = ctx.image(mod)?.dynamicVaddr;
  return entries.find((e) => {
    if (e.addr !== mod.loadBias) return false;
    if (dynVaddr !== undefined) return e.ld === mod.loadBias + dynVaddr;
    return mod.mappings.some((m) => e.ld >= m.start && e.ld < m.end);
  });
}

/**
 * Modules in the order the dynamic linker searches them for a symbol (namespace 0 link_map order),
 * each with its link_map entry. Modules that are mapped but absent from link_map are left out.
 */
export function modulesInLoadOrder(ctx: ProcessContext): { mod: Module; entry: LinkMapEntry }[] {
  return ctx.memo('loadorder', () => {
    const { entries } = readLinkMap(ctx);
    const out: { mod: Module; entry: LinkMapEntry }[] = [];
    const sorted = [...entries].sort((a, b) => a.namespace - b.namespace || a.index - b.index);
    for (const e of sorted) {
      const mod = ctx.modules.find((m) => linkMapEntryOf(ctx, m, [e]) !== undefined);
      if (mod !== undefined) out.push({ mod, entry: e });
    }
    return out;
  });
}

/**
 * Whether the l_name of `entry` names the file `mod` really maps: the name, resolved in the
 * target's root (/proc/PID/root), has the device and inode of the mapped file
 * (/proc/PID/map_files). True/false when that can be told, undefined when not (no name, the vDSO,
 * a name that no longer resolves, unreadable map_files). Memoised per context.
 */
export function linkMapNameMatches(ctx: ProcessContext, mod: Module, entry: LinkMapEntry): boolean | undefined {
  if (entry.name === '' || mod.kind === 'vdso' || !entry.name.startsWith('/')) return undefined;
  // The file was replaced or removed after it was loaded (a package upgrade, a cold install): its
  // old name now leads elsewhere or nowhere, and the kernel still names the mapping by it.
  if (mod.deleted && entry.name === mod.path) return undefined;
  return ctx.memo(`lmname:${entry.self.toString(16)}:${entry.name}`, () => {
    let mapped: { dev: number; ino: number };
    let named: { dev: number; ino: number };
    try {
      mapped = statSync(mod.mapFilesPath ?? mod.path);
    } catch {
      return undefined;
    }
    try {
      named = statSync(`/proc/${ctx.pid}/root${entry.name}`);
    } catch {
      return undefined;
    }
    return mapped.dev === named.dev && mapped.ino === named.ino;
  });
}

/** A module in the start-up order the files give (see startupOrder). */
export interface StartupModule {
  mod: Module;
  entry: LinkMapEntry;
  /** How it came to be loaded at start-up. */
  reason: 'executable' | 'preload' | 'needed' | 'loader';
}

/**
 * Names under which a DT_NEEDED entry finds a loaded module, taken from what cannot be forged in
 * the target's memory: the file's DT_SONAME, the basename of the path the kernel shows for the
 * mapping, and the basename of l_name only when l_name resolves to the mapped file itself.
 */
export function moduleNames(ctx: ProcessContext, mod: Module, entry: LinkMapEntry): string[] {
  const out: string[] = [];
  const so = ctx.image(mod)?.elf.dynamic?.soname;
  if (so !== undefined) out.push(so);
  out.push(basename(mod.path));
  if (entry.name !== '' && linkMapNameMatches(ctx, mod, entry) === true) out.push(basename(entry.name));
  return out;
}

/**
 * The start-up modules of namespace 0 in the order the dynamic linker loads and searches them,
 * computed from the files (not from the order of the target's link_map): the executable, then the
 * `preloads` (in order), then the DT_NEEDED closure breadth-first, each name resolved to a loaded
 * module by moduleNames(); then the loader when no DT_NEEDED named it. This is the order of the
 * main namespace's search list, which the dynamic linker also uses as the link_map order.
 */
export function startupOrder(ctx: ProcessContext, ordered: readonly { mod: Module; entry: LinkMapEntry }[], preloads: readonly { mod: Module; entry: LinkMapEntry }[]): StartupModule[] {
  const byName = new Map<string, { mod: Module; entry: LinkMapEntry }>();
  for (const x of ordered) {
    if (x.mod.kind === 'vdso') continue;
    for (const n of moduleNames(ctx, x.mod, x.entry)) if (!byName.has(n)) byName.set(n, x);
  }
  const out: StartupModule[] = [];
  const seen = new Set<Module>();
  const push = (x: { mod: Module; entry: LinkMapEntry }, reason: StartupModule['reason']) => {
    if (seen.has(x.mod)) return;
    seen.add(x.mod);
    out.push({ mod: x.mod, entry: x.entry, reason });
  };
  const exe = ordered.find((x) => x.mod.kind === 'executable');
  if (exe !== undefined) push(exe, 'executable');
  for (const p of preloads) push(p, 'preload');
  for (let i = 0; i < out.length; i++) {
    for (const n of ctx.image(out[i]!.mod)?.elf.dynamic?.needed ?? []) {
      const d = byName.get(n) ?? byName.get(basename(n));
      if (d !== undefined) push(d, 'needed');
    }
  }
  const loader = ordered.find((x) => x.mod.kind === 'loader');
  if (loader !== undefined) push(loader, 'loader');
  return out;
}
