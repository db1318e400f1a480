/**
 * docs/limitations.md cannot drift from the code: every stable error code the library throws (and
 * every code of a `skipped` result) is documented there, and every REFUSED_* code it documents
 * exists. Codes are collected from the sources: `new XxxError('CODE'`, `fail('CODE'`,
 * `export const CODE = 'CODE'`, code tables (`KEY: 'REFUSED_…'`, `ELF_…`, `DWARF_…`) and result
 * codes (`code: 'CODE'`) and either-or codes (`? 'A' : 'B'`).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const PATTERNS: RegExp[] = [
  /new [A-Za-z0-9]*Error\(\s*'([A-Z][A-Z0-9_]+)'/g,
  /\bfail\(\s*'([A-Z][A-Z0-9_]+)'/g,
  /export const ([A-Z][A-Z0-9_]+) = '\1'/g,
  /:\s*'((?:REFUSED|ELF|DWARF)_[A-Z0-9_]+)'/g,
  /code: '([A-Z][A-Z0-9_]+)'/g,
  /\? '([A-Z][A-Z0-9_]+)'\s*: '([A-Z][A-Z0-9_]+)'/g,
];

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** Every code the sources define, with one file that defines it. */
export function codesIn(files: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    for (const re of PATTERNS) {
      for (const m of text.matchAll(re)) for (const c of m.slice(1)) if (c !== undefined && c.includes('_')) out.set(c, f);
    }
  }
  return out;
}

/** The codes of the ErrorCode union (src/error-codes.ts). */
function unionCodes(): Set<string> {
  const text = readFileSync(join(REPO_ROOT, 'src/error-codes.ts'), 'utf8');
  return new Set([...text.matchAll(/^\s*\| '([A-Z][A-Z0-9_]*)'/gm)].map((m) => m[1]!));
}

describe('docs/limitations.md lists every error code', () => {
  const doc = readFileSync(join(REPO_ROOT, 'docs/limitations.md'), 'utf8');
  const codes = codesIn(sources(join(REPO_ROOT, 'src')));
  const union = unionCodes();

  it('the ErrorCode union holds every code the sources use', () => {
    expect(union.size).toBeGreaterThan(100);
    expect([...codes.keys()].filter((c) => !union.has(c))).toEqual([]);
  });

  it('the collector finds the codes of every layer (the check below is not vacuous)', () => {
    for (const c of ['REFUSED_DATA_ADDED', 'TARGET_NEVER_LEAVES', 'BRANCH_INTO_SITE', 'PACKAGE_UNSIGNED', 'PROCESS_ALREADY_TRACED', 'COLD_WRONG_FILE', 'ELF_BAD_MAGIC', 'USAGE_BAD_PID', 'RUNS_FIXED_BUILD']) {
      expect(codes.has(c), c).toBe(true);
    }
    expect(codes.size).toBeGreaterThan(100);
  });

  it('every code is documented', () => {
    const missing = [...union].filter((c) => !new RegExp(`\\b${c}\\b`).test(doc)).map((c) => `${c} (${codes.get(c)?.slice(REPO_ROOT.length + 1) ?? 'src/error-codes.ts'})`);
    expect(missing, `add these codes to docs/limitations.md: ${missing.join(', ')}`).toEqual([]);
  });

  it('every documented builder refusal exists', () => {
    const documented = new Set(doc.match(/\bREFUSED_[A-Z0-9_]+\b/g) ?? []);
    expect([...documented].filter((c) => !codes.has(c))).toEqual([]);
  });
});
