/**
 * Pairing of compilation units across the two builds. Local symbols are keyed by their STT_FILE
 * (`L:file:name`), so a fix saved under another name (`server.c` → `server-fixed.c`) would make
 * every file-scoped static of that unit look removed and added. Units whose name exists in only one
 * build are paired by content instead: the names (and sizes) of their local functions and objects.
 * The new unit's symbols are then keyed under the old unit's name.
 */
import { HotpatchError } from '../../errors.js';
import { STB_LOCAL, STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_TLS, type ElfSymbol } from '../../elf/index.js';
import { RefusalCode, type Refusal } from './refusal.js';

/** How the units of the new build map to those of the old one. */
export interface UnitPairing {
  /** New unit name → old unit name, for every unit paired under another name. */
  renamed: Map<string, string>;
  /** Set when some units could not be paired with confidence (one refusal for all of them). */
  refusal?: Refusal;
}

/**
 * Share of local names two units must have in common (of all names in either) to be paired by
 * content: a fix adds or drops a few statics, an unrelated unit shares at most a few common ones.
 */
const MIN_SIMILARITY = 0.5;

type Unit = Map<string, bigint>;

/** Local functions and objects of each STT_FILE: name → size. */
function unitsOf(symbols: readonly ElfSymbol[]): Map<string, Unit> {
  const out = new Map<string, Unit>();
  for (const s of symbols) {
    if (s.bind !== STB_LOCAL || s.file === undefined || s.file === '' || s.name === '') continue;
    if (s.type !== STT_FUNC && s.type !== STT_GNU_IFUNC && s.type !== STT_OBJECT && s.type !== STT_TLS) continue;
    let u = out.get(s.file);
    if (!u) out.set(s.file, (u = new Map()));
    u.set(s.name, s.size);
  }
  return out;
}

/** Jaccard similarity of two units by names, and (tie-break) by names with sizes. */
function similarity(a: Unit, b: Unit): [number, number] {
  let names = 0;
  let sized = 0;
  for (const [name, size] of a) {
    if (!b.has(name)) continue;
    names++;
    if (b.get(name) === size) sized++;
  }
  const union = a.size + b.size - names;
  return [names / union, sized / (a.size + b.size - sized)];
}

function better(x: [number, number], y: [number, number]): number {
  return x[0] !== y[0] ? x[0] - y[0] : x[1] - y[1];
}

/** The one best candidate of `scores`, or undefined when two tie for best. */
function uniqueBest<K>(scores: ReadonlyMap<K, [number, number]>): K | undefined {
  let best: K | undefined;
  let tie = false;
  for (const [k, s] of scores) {
    if (best === undefined) best = k;
    else {
      const c = better(s, scores.get(best)!);
      if (c > 0) {
        best = k;
        tie = false;
      } else if (c === 0) tie = true;
    }
  }
  return tie ? undefined : best;
}

/**
 * Pairs the units of `neu` with those of `old`. `forced` (new name → old name, from the user) is
 * taken as given; other units keep their name when the old build has it, else are paired by content.
 * Throws HotpatchError(BUILD_BAD_UNIT) when a forced pair names a unit a build does not have.
 */
export function pairUnits(old: readonly ElfSymbol[], neu: readonly ElfSymbol[], forced: Readonly<Record<string, string>> = {}): UnitPairing {
  const a = unitsOf(old);
  const b = unitsOf(neu);
  const renamed = new Map<string, string>();
  for (const [n, o] of Object.entries(forced)) {
    if (!b.has(n)) throw new HotpatchError('BUILD_BAD_UNIT', `--unit ${n}=${o}: the new build has no compilation unit ${n} with local symbols (units: ${[...b.keys()].join(', ') || 'none'})`);
    if (!a.has(o)) throw new HotpatchError('BUILD_BAD_UNIT', `--unit ${n}=${o}: the running build has no compilation unit ${o} with local symbols (units: ${[...a.keys()].join(', ') || 'none'})`);
    renamed.set(n, o);
  }
  const taken = new Set(renamed.values());
  const newOnly = [...b.keys()].filter((n) => !renamed.has(n) && !a.has(n));
  const oldOnly = [...a.keys()].filter((o) => !taken.has(o) && (!b.has(o) || renamed.has(o)));
  const scores = new Map<string, Map<string, [number, number]>>();
  for (const n of newOnly) {
    const m = new Map<string, [number, number]>();
    for (const o of oldOnly) {
      const s = similarity(b.get(n)!, a.get(o)!);
      if (s[0] > 0) m.set(o, s);
    }
    scores.set(n, m);
  }
  const unpairedNew: string[] = [];
  const unpairedOld = new Set<string>();
  for (const n of newOnly) {
    const m = scores.get(n)!;
    if (m.size === 0) continue; // a unit new in the fix: nothing to pair
    const o = uniqueBest(m);
    const back = o === undefined ? undefined : uniqueBest(new Map(newOnly.filter((x) => scores.get(x)!.has(o)).map((x) => [x, scores.get(x)!.get(o)!])));
    if (o !== undefined && back === n && m.get(o)![0] >= MIN_SIMILARITY) {
      renamed.set(n, o);
      continue;
    }
    unpairedNew.push(n);
    for (const x of m.keys()) unpairedOld.add(x);
  }
  if (unpairedNew.length === 0) return { renamed };
  for (const o of renamed.values()) unpairedOld.delete(o);
  const list = (xs: Iterable<string>) => [...xs].sort().join(', ');
  const example = unpairedNew.sort()[0]!;
  return {
    renamed,
    refusal: {
      code: RefusalCode.UNITS_UNPAIRED,
      symbol: list(unpairedNew),
      message:
        `the compilation unit(s) ${list(unpairedNew)} of the new build have no unit of that name in the running build, and their static symbols do not say which of ${list(unpairedOld)} each replaces ` +
        `(shared by several, or too few in common): name each pair with --unit NEW=OLD (e.g. --unit ${example}=${[...scores.get(example)!.keys()].sort()[0]}), or build the fix from sources with the old file names`,
    },
  };
}
