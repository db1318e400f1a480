/**
 * Symbol resolution for new code against a running process: first the target module (.symtab, then
 * .dynsym; a `file` restricts to local symbols of that STT_FILE; a `version` to that dynsym
 * version), then the .dynsym of every other loaded module in load order (globals and weaks, default
 * versions first). Runs before freezing; module ELF files are parsed lazily and at most once.
 */
import { RefusedError } from '../../errors.js';
import { STB_GLOBAL, STB_LOCAL, STB_WEAK, STT_GNU_IFUNC, STT_TLS, SHN_ABS, SHN_UNDEF, type ElfFile, type ElfSymbol } from '../../elf/index.js';
import type { RelocationTarget } from '../plan.js';
import type { SymbolLookup } from './relocate.js';

/** A loaded module as the resolver needs it. `elf()` parses (and caches) its mapped file. */
export interface ResolverModule {
  name: string;
  path: string;
  loadBias: bigint;
  elf(): ElfFile | undefined;
}

type SymbolTarget = Extract<RelocationTarget, { kind: 'symbol' }>;

function describe(t: SymbolTarget): string {
  return `${t.name}${t.version ? `@${t.version}` : ''}${t.file ? ` (static in ${t.file})` : ''}`;
}

function runtimeAddress(s: ElfSymbol, loadBias: bigint, t: SymbolTarget, module: string): bigint {
  if (s.type === STT_TLS) {
    throw new RefusedError('LINK_TLS_SYMBOL', `new code refers to thread-local ${describe(t)} in ${module} by address; thread-local variables cannot be relocated by the patch linker`);
  }
  if (s.type === STT_GNU_IFUNC) {
    throw new RefusedError(
      'LINK_IFUNC_SYMBOL',
      `new code refers to ${describe(t)} in ${module}, an IFUNC whose symbol value is its resolver, not the implementation; call it through the target's PLT/GOT instead (rebuild the package)`,
    );
  }
  return s.shndx === SHN_ABS ? s.value : s.value + loadBias;
}

/** Picks the best definition of `t` in one table of one module, or undefined. */
function pick(elf: ElfFile, t: SymbolTarget, table: 'symtab' | 'dynsym'): ElfSymbol | undefined {
  const candidates = elf
    .symbolsNamed(t.name)
    .filter((s) => s.dynamic === (table === 'dynsym') && s.shndx !== SHN_UNDEF)
    .filter((s) => (t.file !== undefined ? s.bind === STB_LOCAL && s.file === t.file : true))
    .filter((s) => (t.version !== undefined ? s.version?.name === t.version : true));
  if (t.file !== undefined) return candidates[0];
  // Globals before weaks before locals; among dynsym versions the default (non-hidden) one.
  const rank = (s: ElfSymbol): number =>
    (s.bind === STB_GLOBAL ? 0 : s.bind === STB_WEAK ? 2 : 4) + (s.version?.hidden === true ? 1 : 0);
  return [...candidates].sort((a, b) => rank(a) - rank(b))[0];
}

/**
 * Builds the lookup used by the linker. `target` is the patched module, `others` the other loaded
 * modules in load order (the main executable first, as the dynamic linker searches them).
 */
export function createSymbolLookup(target: ResolverModule, others: readonly ResolverModule[]): SymbolLookup {
  const cache = new Map<string, bigint | undefined>();
  return (t) => {
    const key = `${t.name}\0${t.version ?? ''}\0${t.file ?? ''}`;
    if (cache.has(key)) return cache.get(key);
    let result: bigint | undefined;
    const elf = target.elf();
    if (elf) {
      const s = (t.version === undefined ? pick(elf, t, 'symtab') : undefined) ?? pick(elf, t, 'dynsym');
      if (s) result = runtimeAddress(s, target.loadBias, t, target.name);
    }
    if (result === undefined && t.file === undefined) {
      for (const m of others) {
        const e = m.elf();
        if (!e) continue;
        const s = pick(e, t, 'dynsym');
        if (s && s.bind !== STB_LOCAL) {
          result = runtimeAddress(s, m.loadBias, t, m.name);
          break;
        }
      }
    }
    cache.set(key, result);
    return result;
  };
}
