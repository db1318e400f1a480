/**
 * Whole-build checks that refuse a patch: the export table, the import table, writable and
 * thread-local data, and code addresses stored in data. A live patch replaces code and may add
 * variables of its own; the running process keeps its data, its dynamic linking and its TLS block
 * as they are.
 */
import { readDwarf, SHN_UNDEF, STT_FUNC, STT_GNU_IFUNC, type DwarfInfo, type ElfSymbol } from '../../elf/index.js';
import type { BuildImage, ObjectInfo } from './image.js';
import { displayKey } from './image.js';
import { RefusalCode, type Refusal } from './refusal.js';

const BIND_NAMES: Record<number, string> = { 0: 'LOCAL', 1: 'GLOBAL', 2: 'WEAK', 10: 'UNIQUE' };
const STT_NAMES: Record<number, string> = { 0: 'NOTYPE', 1: 'OBJECT', 2: 'FUNC', 3: 'SECTION', 4: 'FILE', 5: 'COMMON', 6: 'TLS', 10: 'IFUNC' };

function versioned(s: ElfSymbol): string {
  return s.version ? `${s.name}@${s.version.hidden ? '' : '@'}${s.version.name}` : s.name;
}

/** Dynamic symbols defined by the module: added, removed, or changed in type/size/binding/version. */
export function checkExports(old: BuildImage, neu: BuildImage): Refusal[] {
  const out: Refusal[] = [];
  const defined = (img: BuildImage) => {
    const m = new Map<string, ElfSymbol[]>();
    for (const s of img.elf.dynamicSymbols) {
      if (s.shndx === SHN_UNDEF || s.name === '') continue;
      const l = m.get(s.name);
      if (l) l.push(s);
      else m.set(s.name, [s]);
    }
    return m;
  };
  const a = defined(old);
  const b = defined(neu);
  for (const [name, ss] of b) {
    const os = a.get(name);
    if (!os) {
      out.push({
        code: RefusalCode.EXPORT_ADDED,
        symbol: name,
        message: `the new build exports ${versioned(ss[0]!)} (${STT_NAMES[ss[0]!.type] ?? ss[0]!.type}), which the running build does not: the export table cannot change in a live patch; ship this fix as a cold update (hotpatch build --cold, apply --cold and restart)`,
      });
      continue;
    }
    // A function's size is not part of the ABI (its code is what a patch changes); an object's is
    // (copy relocations in executables reserve exactly st_size bytes).
    const describe = (s: ElfSymbol) =>
      `${versioned(s)} ${STT_NAMES[s.type] ?? s.type}${s.type === STT_FUNC || s.type === STT_GNU_IFUNC ? '' : ` size ${s.size}`} ${BIND_NAMES[s.bind] ?? `bind ${s.bind}`}`;
    const sa = os.map(describe).sort().join(', ');
    const sb = ss.map(describe).sort().join(', ');
    if (sa !== sb) {
      out.push({
        code: RefusalCode.EXPORT_CHANGED,
        symbol: name,
        message: `exported symbol ${name} changed: ${sa} -> ${sb}; callers in other modules would see the old definition: ship this fix as a cold update`,
      });
    }
  }
  for (const [name, os] of a) {
    if (!b.has(name)) {
      out.push({
        code: RefusalCode.EXPORT_REMOVED,
        symbol: name,
        message: `the new build no longer exports ${versioned(os[0]!)}: modules bound to it in the running process would keep using it; ship this fix as a cold update`,
      });
    }
  }
  return out;
}

/** New DT_NEEDED libraries and new imported symbols. */
export function checkImports(old: BuildImage, neu: BuildImage): Refusal[] {
  const out: Refusal[] = [];
  const na = new Set(old.elf.dynamic?.needed ?? []);
  for (const lib of neu.elf.dynamic?.needed ?? []) {
    if (!na.has(lib)) {
      out.push({
        code: RefusalCode.NEEDED_ADDED,
        symbol: lib,
        message: `the new build needs ${lib} (DT_NEEDED), which the running build does not load: a live patch cannot load libraries; ship this fix as a cold update`,
      });
    }
  }
  const imports = (img: BuildImage) => {
    const m = new Set<string>();
    for (const s of img.elf.dynamicSymbols) if (s.shndx === SHN_UNDEF && s.name !== '') m.add(versioned(s));
    return m;
  };
  const ia = imports(old);
  for (const s of imports(neu)) {
    if (!ia.has(s)) {
      out.push({
        code: RefusalCode.IMPORT_ADDED,
        symbol: s,
        message: `the new build imports ${s}, which the running build does not import: the import table cannot change in a live patch; ship this fix as a cold update`,
      });
    }
  }
  return out;
}

const SKIP_SECTIONS = new Set(['.got', '.got.plt', '.dynamic', '.init_array', '.fini_array', '.preinit_array']);

function describe(o: ObjectInfo): string {
  return `${displayKey(o.key)} in ${o.section.name}`;
}

function tlsSignature(img: BuildImage, o: ObjectInfo): string {
  const t = img.tls;
  if (!t) return '';
  if (o.vaddr + BigInt(o.size) > t.filesz) return '';
  try {
    return Buffer.from(img.elf.readVaddr(t.vaddr + o.vaddr, o.size)).toString('hex');
  } catch {
    return '';
  }
}

/**
 * Writable and thread-local data objects: removed, resized or re-initialised, thread-local ones
 * added; and the TLS block's layout. Objects of zero size and linker-owned tables are ignored.
 */
export function checkData(old: BuildImage, neu: BuildImage): Refusal[] {
  const out: Refusal[] = [];
  const relevant = (img: BuildImage) => {
    const m = new Map<string, ObjectInfo>();
    for (const o of img.objects) if (o.kind === 'writable' && o.size > 0 && !SKIP_SECTIONS.has(o.section.name)) m.set(o.key, o);
    for (const o of img.tlsObjects.values()) if (o.size > 0) m.set(o.key, o);
    return m;
  };
  const a = relevant(old);
  const b = relevant(neu);
  for (const [key, nb] of b) {
    const oa = a.get(key);
    if (!oa) {
      // A new variable lives in the patch's own writable area (carried by the emitter when new
      // code uses it); a new thread-local one would need a slot in every thread's TLS block.
      if (nb.kind === 'tls') {
        out.push({
          code: RefusalCode.DATA_ADDED,
          symbol: displayKey(key),
          message: `the new build adds the thread-local data object ${describe(nb)} (${nb.size} bytes): existing threads have no room for it in their TLS blocks; ship this fix as a cold update or keep the new state in a (non-thread-local) variable`,
        });
      }
      continue;
    }
    if (oa.size !== nb.size) {
      out.push({
        code: RefusalCode.DATA_RESIZED,
        symbol: displayKey(key),
        message: `data object ${describe(nb)} changes size ${oa.size} -> ${nb.size} bytes: the running process keeps the old object; ship this fix as a cold update`,
      });
      continue;
    }
    if (nb.kind === 'tls') {
      if (oa.vaddr !== nb.vaddr) {
        out.push({
          code: RefusalCode.TLS_LAYOUT_CHANGED,
          symbol: displayKey(key),
          message: `thread-local variable ${displayKey(key)} moves in the TLS block (offset ${oa.vaddr} -> ${nb.vaddr}): existing threads keep the old layout; ship this fix as a cold update`,
        });
      } else if (tlsSignature(old, oa) !== tlsSignature(neu, nb)) {
        out.push({
          code: RefusalCode.DATA_REINITIALISED,
          symbol: displayKey(key),
          message: `thread-local variable ${displayKey(key)} gets a new initial value: existing threads keep the old one; ship this fix as a cold update`,
        });
      }
      continue;
    }
    if (old.objectSignature(oa) !== neu.objectSignature(nb)) {
      out.push({
        code: RefusalCode.DATA_REINITIALISED,
        symbol: displayKey(key),
        message: `data object ${describe(nb)} gets a new initial value: the running process keeps its current value, so the fix would not take effect; change the value at run time or ship a cold update`,
      });
    }
  }
  for (const [key, oa] of a) {
    if (!b.has(key)) {
      out.push({
        code: RefusalCode.DATA_REMOVED,
        symbol: displayKey(key),
        message: `the new build removes the ${oa.kind === 'tls' ? 'thread-local' : 'writable'} data object ${describe(oa)}: unchanged code of the running build may still use it; ship this fix as a cold update`,
      });
    }
  }
  const ta = old.tls;
  const tb = neu.tls;
  if ((ta === null) !== (tb === null) || (ta && tb && (ta.memsz !== tb.memsz || ta.align !== tb.align))) {
    out.push({
      code: RefusalCode.TLS_LAYOUT_CHANGED,
      symbol: 'PT_TLS',
      message: `the thread-local storage block changes (${ta ? `${ta.memsz} bytes, align ${ta.align}` : 'none'} -> ${tb ? `${tb.memsz} bytes, align ${tb.align}` : 'none'}): existing threads keep the old block; ship this fix as a cold update`,
    });
  }
  return out;
}

/**
 * With DWARF in both builds: every struct/union/class used by a changed function must keep its size
 * and the offsets of its members (the running process's objects, on the heap or on stacks, have the
 * old layout). Without DWARF in either build the check cannot run; the caller reports that.
 */
export function checkStructs(old: BuildImage, neu: BuildImage, functions: readonly { name: string; file?: string; newFile?: string }[]): { refusals: Refusal[]; checked: boolean } {
  const da = readDwarfSafe(old);
  const db = readDwarfSafe(neu);
  if (!da || !db) return { refusals: [], checked: false };
  const out: Refusal[] = [];
  const seen = new Set<string>();
  for (const f of functions) {
    const fa = da.findFunction(f.name, f.file);
    const fb = db.findFunction(f.name, f.newFile ?? f.file);
    const keys = new Set([...(fa?.structs ?? []), ...(fb?.structs ?? [])]);
    for (const key of keys) {
      if (seen.has(key)) continue;
      const la = da.findStructs(key);
      const lb = db.findStructs(key);
      if (la.length === 0 || lb.length === 0) continue;
      const a = la[0]!;
      const b = lb[0]!;
      const diffs: string[] = [];
      if (a.byteSize !== b.byteSize) diffs.push(`size ${a.byteSize ?? '?'} -> ${b.byteSize ?? '?'}`);
      const ma = new Map(a.members.map((m) => [m.name, m]));
      const mb = new Map(b.members.map((m) => [m.name, m]));
      for (const [name, m] of ma) {
        const n = mb.get(name);
        if (!n) diffs.push(`member ${name} removed`);
        else if (m.offset !== n.offset || m.bitOffset !== n.bitOffset || m.bitSize !== n.bitSize) {
          diffs.push(`member ${name} moves from offset ${m.offset ?? `bit ${m.bitOffset}`} to ${n.offset ?? `bit ${n.bitOffset}`}`);
        } else if (m.type !== n.type) diffs.push(`member ${name} changes type ${m.type} -> ${n.type}`);
      }
      for (const [name, n] of mb) if (!ma.has(name)) diffs.push(`member ${name} added at offset ${n.offset ?? `bit ${n.bitOffset}`}`);
      if (diffs.length === 0) continue;
      seen.add(key);
      const fname = f.file ? `${f.name} (${f.file})` : f.name;
      out.push({
        code: RefusalCode.STRUCT_LAYOUT_CHANGED,
        symbol: key,
        message: `${key}, used by the changed function ${fname}, changes layout: ${diffs.join('; ')}; objects the running process already holds have the old layout, so the new code would misread them: ship this fix as a cold update or keep the layout`,
      });
    }
  }
  return { refusals: out, checked: true };
}

function readDwarfSafe(img: BuildImage): DwarfInfo | null {
  try {
    return readDwarf(img.debugElf ?? img.elf);
  } catch {
    return null;
  }
}
