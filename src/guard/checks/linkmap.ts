/**
 * The dynamic linker's module list as the target sees it: r_debug (found through DT_DEBUG of the
 * main executable, else the loader's `_r_debug` symbol) → link_map chain, and with
 * r_debug_extended (glibc ≥ 2.35, r_version ≥ 2) the other dlmopen namespaces through r_next.
 * Read from memory only (no ptrace).
 */
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
