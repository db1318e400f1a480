/**
 * Classifying every function entry of a module at once (the `scan` workload). Seeing the whole
 * module lets the padding rule of `classifyEntry` use what a single function cannot know: where the
 * previous function ends (`paddingFloor`) and which addresses other code branches to.
 */
import { iterateInstructions } from './decode.js';
import { classifyEntry, type EntryClass } from './entry.js';

function readOrEmpty(read: (address: bigint, length: number) => Uint8Array | undefined, address: bigint, length: number): Uint8Array {
  try {
    const got = read(address, length);
    return got !== undefined && got.length === length ? got : new Uint8Array(0);
  } catch {
    return new Uint8Array(0);
  }
}

/** A function of the module: entry address and symbol size, in the address space of `read`. */
export interface ModuleFunction {
  name: string;
  address: bigint;
  size: number;
}

export interface ModuleEntryClass extends EntryClass {
  name: string;
}

export interface ClassifyModuleOptions {
  /**
   * Decode every function first and refuse padding that a direct branch from anywhere in the
   * module lands inside (default true; about doubles the time).
   */
  crossReferences?: boolean;
  /** Passed to classifyEntry (default true). */
  checkBranches?: boolean;
}

/**
 * Classifies the entries of `functions` (aliases at one address are classified once, under the
 * first name). `read(address, length)` returns exactly `length` bytes, or undefined / throws when
 * they are not all available (then fewer bytes before the entry are tried). Padding is only looked
 * for after the end of the previous function; an entry inside another function's range (nested or
 * overlapping symbols, common in hand-written assembly) gets no padding at all. Results are in
 * address order.
 */
export function classifyModuleEntries(
  functions: readonly ModuleFunction[],
  read: (address: bigint, length: number) => Uint8Array | undefined,
  options: ClassifyModuleOptions = {},
): ModuleEntryClass[] {
  const sorted = [...functions].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  let targets: Set<bigint> | undefined;
  if (options.crossReferences ?? true) {
    targets = new Set();
    for (const f of sorted) {
      const end = f.address + BigInt(f.size);
      const code = readOrEmpty(read, f.address, f.size);
      for (const i of iterateInstructions(code, f.address, { text: false })) {
        const t = i.branchTarget;
        // Branches inside their own function are checked by classifyEntry itself.
        if (t !== undefined && (t < f.address || t >= end)) targets.add(t);
      }
    }
  }
  const out: ModuleEntryClass[] = [];
  let prevEnd: bigint | undefined;
  let prevAddress: bigint | undefined;
  for (const f of sorted) {
    if (f.address === prevAddress) continue;
    prevAddress = f.address;
    let before: Uint8Array = new Uint8Array(0);
    for (let n = 16; n > 0; n--) {
      if (f.address < BigInt(n)) continue;
      const got = readOrEmpty(read, f.address - BigInt(n), n);
      if (got.length === n) {
        before = got;
        break;
      }
    }
    const c = classifyEntry({
      address: f.address,
      code: readOrEmpty(read, f.address, f.size),
      before,
      ...(prevEnd !== undefined ? { paddingFloor: prevEnd < f.address ? prevEnd : f.address } : {}),
      ...(targets !== undefined ? { externalBranchTargets: targets } : {}),
      checkBranches: options.checkBranches ?? true,
    });
    out.push({ name: f.name, ...c });
    const end = f.address + BigInt(f.size);
    if (prevEnd === undefined || end > prevEnd) prevEnd = end;
  }
  return out;
}
