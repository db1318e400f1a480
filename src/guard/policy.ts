/**
 * Guard policy: which processes are protected, what to do per structure, trusted signers, which
 * processes may hold JIT code and which benign modifiers (breakpoints, LD_PRELOAD) are allowed.
 * The file format is JSON, documented in docs/guard.md; parsing is strict (unknown keys are errors,
 * so a typo never silently weakens protection).
 */
import { basename } from 'node:path';
import { HotpatchError, UsageError } from '../errors.js';
import { readTrustedFile } from '../fs/index.js';
import { ALL_STRUCTURES, FINDING_KINDS, SEVERITIES, severityRank, type Finding, type FindingKind, type Severity, type StructureCode } from './finding.js';

export const GUARD_BAD_POLICY = 'GUARD_BAD_POLICY';
/** Size limit of a policy file. */
export const MAX_POLICY_SIZE = 4 * 1024 * 1024;

import { GUARD_ACTIONS, type GuardAction } from './defaults.js';

export { DEFAULT_INTERVAL_MS, GUARD_ACTIONS, type GuardAction } from './defaults.js';

/** Matches a process by exe path, name (comm or exe basename) and/or build-id; all given fields must match. */
export interface ProcessMatcher {
  exe?: string;
  name?: string;
  buildId?: string;
}

/** Suppresses findings that match every given field (e.g. a known LD_PRELOAD allocator). */
export interface FindingAllowance {
  code?: StructureCode;
  kind?: FindingKind;
  /** Exact module path, or a suffix starting with "/" (e.g. "/libjemalloc.so.2"). */
  module?: string;
  process?: ProcessMatcher;
}

export interface Policy {
  /** Processes protected by `guard` when no --pid/--all/--exe is given. Empty: none. */
  protect: ProcessMatcher[];
  /** Processes never checked (e.g. a debugger's target you work on). */
  ignore: ProcessMatcher[];
  /** Action per structure code; `default` for the others. */
  actions: { default: GuardAction } & Partial<Record<StructureCode, GuardAction>>;
  /** Findings below this severity are reported but never acted on. */
  actOnSeverity: Severity;
  /** `verify` exits 5 only for a finding of at least this severity (default high; `--fail-on` overrides). */
  failOn: Severity;
  /** Public key files of trusted patch signers (used in addition to --trust). */
  trustedKeys: string[];
  /**
   * Processes allowed to hold JIT code, or "recognised": any process in which a recognised
   * runtime (Node.js/V8, the JVM's libjvm.so, LuaJIT, libffi closures) is loaded.
   */
  jit: 'recognised' | 'none' | ProcessMatcher[];
  /** Debugger/uprobe breakpoints: `true` suppresses them for every process, or a list of processes. */
  allowBreakpoints: boolean | ProcessMatcher[];
  /** Findings suppressed by policy. */
  allow: FindingAllowance[];
  /** Where the file came from (diagnostics). */
  source: string;
}

/** The policy used when no --policy is given: log everything, JIT allowed for recognised runtimes. */
export function defaultPolicy(): Policy {
  return {
    protect: [],
    ignore: [],
    actions: { default: 'log' },
    actOnSeverity: 'low',
    failOn: 'high',
    trustedKeys: [],
    jit: 'recognised',
    allowBreakpoints: false,
    allow: [],
    source: '(default)',
  };
}

function bad(source: string, what: string): UsageError {
  return new UsageError(GUARD_BAD_POLICY, `policy ${source}: ${what}; see docs/guard.md for the format`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(o: Record<string, unknown>, allowed: readonly string[], where: string, source: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw bad(source, `unknown key "${k}" in ${where}`);
}

function str(v: unknown, where: string, source: string): string {
  if (typeof v !== 'string' || v === '') throw bad(source, `${where} must be a non-empty string`);
  return v;
}

function parseMatcher(v: unknown, where: string, source: string): ProcessMatcher {
  if (typeof v === 'string') return v.startsWith('/') ? { exe: v } : { name: v };
  if (!isObject(v)) throw bad(source, `${where} must be an object {exe?, name?, buildId?} or a string`);
  checkKeys(v, ['exe', 'name', 'buildId'], where, source);
  const m: ProcessMatcher = {};
  if (v.exe !== undefined) m.exe = str(v.exe, `${where}.exe`, source);
  if (v.name !== undefined) m.name = str(v.name, `${where}.name`, source);
  if (v.buildId !== undefined) {
    const b = str(v.buildId, `${where}.buildId`, source).toLowerCase();
    if (!/^[0-9a-f]+$/.test(b)) throw bad(source, `${where}.buildId must be hex`);
    m.buildId = b;
  }
  if (m.exe === undefined && m.name === undefined && m.buildId === undefined) throw bad(source, `${where} matches nothing: give exe, name or buildId`);
  return m;
}

function parseMatchers(v: unknown, where: string, source: string): ProcessMatcher[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw bad(source, `${where} must be an array`);
  return v.map((m, i) => parseMatcher(m, `${where}[${i}]`, source));
}

function parseAction(v: unknown, where: string, source: string): GuardAction {
  if (typeof v !== 'string' || !(GUARD_ACTIONS as readonly string[]).includes(v)) throw bad(source, `${where} must be one of ${GUARD_ACTIONS.join(', ')}`);
  return v as GuardAction;
}

function parseCode(k: string | number, where: string, source: string): StructureCode {
  const n = typeof k === 'number' ? k : /^\d+$/.test(k) ? Number(k) : NaN;
  if (!(ALL_STRUCTURES as readonly number[]).includes(n)) throw bad(source, `${where}: "${k}" is not a structure code 0-10`);
  return n as StructureCode;
}

const KINDS: readonly FindingKind[] = FINDING_KINDS;

function parseSeverity(v: unknown, key: string, source: string): Severity {
  if (typeof v !== 'string' || !(SEVERITIES as readonly string[]).includes(v)) throw bad(source, `${key} must be one of ${SEVERITIES.join(', ')}`);
  return v as Severity;
}

/** Parses and validates a policy document. Throws UsageError(GUARD_BAD_POLICY) naming the bad key. */
export function parsePolicy(text: string, source = '(inline)'): Policy {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw bad(source, `not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(doc)) throw bad(source, 'the document must be a JSON object');
  checkKeys(doc, ['protect', 'ignore', 'actions', 'actOnSeverity', 'failOn', 'trustedKeys', 'jit', 'allowBreakpoints', 'allow'], 'the policy', source);
  const p = defaultPolicy();
  p.source = source;
  p.protect = parseMatchers(doc.protect, 'protect', source);
  p.ignore = parseMatchers(doc.ignore, 'ignore', source);
  if (doc.actions !== undefined) {
    if (typeof doc.actions === 'string') p.actions = { default: parseAction(doc.actions, 'actions', source) };
    else if (isObject(doc.actions)) {
      for (const [k, v] of Object.entries(doc.actions)) {
        if (k === 'default') p.actions.default = parseAction(v, 'actions.default', source);
        else p.actions[parseCode(k, 'actions', source)] = parseAction(v, `actions.${k}`, source);
      }
    } else throw bad(source, 'actions must be an action name or an object {"default": ..., "0": ..., ...}');
  }
  if (doc.actOnSeverity !== undefined) p.actOnSeverity = parseSeverity(doc.actOnSeverity, 'actOnSeverity', source);
  if (doc.failOn !== undefined) p.failOn = parseSeverity(doc.failOn, 'failOn', source);
  if (doc.trustedKeys !== undefined) {
    if (!Array.isArray(doc.trustedKeys)) throw bad(source, 'trustedKeys must be an array of public key file paths');
    p.trustedKeys = doc.trustedKeys.map((k, i) => str(k, `trustedKeys[${i}]`, source));
  }
  if (doc.jit !== undefined) {
    if (doc.jit === 'recognised' || doc.jit === 'none') p.jit = doc.jit;
    else if (Array.isArray(doc.jit)) p.jit = parseMatchers(doc.jit, 'jit', source);
    else throw bad(source, 'jit must be "recognised", "none" or an array of process matchers');
  }
  if (doc.allowBreakpoints !== undefined) {
    if (typeof doc.allowBreakpoints === 'boolean') p.allowBreakpoints = doc.allowBreakpoints;
    else p.allowBreakpoints = parseMatchers(doc.allowBreakpoints, 'allowBreakpoints', source);
  }
  if (doc.allow !== undefined) {
    if (!Array.isArray(doc.allow)) throw bad(source, 'allow must be an array');
    p.allow = doc.allow.map((a, i) => {
      const where = `allow[${i}]`;
      if (!isObject(a)) throw bad(source, `${where} must be an object {code?, kind?, module?, process?}`);
      checkKeys(a, ['code', 'kind', 'module', 'process'], where, source);
      const out: FindingAllowance = {};
      if (a.code !== undefined) {
        if (typeof a.code !== 'number' && typeof a.code !== 'string') throw bad(source, `${where}.code must be a structure code`);
        out.code = parseCode(a.code, `${where}.code`, source);
      }
      if (a.kind !== undefined) {
        if (typeof a.kind !== 'string' || !(KINDS as readonly string[]).includes(a.kind)) throw bad(source, `${where}.kind must be one of ${KINDS.join(', ')}`);
        out.kind = a.kind as FindingKind;
      }
      if (a.module !== undefined) out.module = str(a.module, `${where}.module`, source);
      if (a.process !== undefined) out.process = parseMatcher(a.process, `${where}.process`, source);
      if (out.code === undefined && out.kind === undefined && out.module === undefined) throw bad(source, `${where} would allow every finding: give code, kind or module`);
      return out;
    });
  }
  return p;
}

/**
 * Reads and parses a policy file. A policy allows findings and names trusted keys, so the file and
 * every directory above it must be safe from other users (UnsafePathError TRUST_UNSAFE otherwise,
 * see src/fs/path-check.ts); the key files it names are checked the same way when they are loaded.
 */
export function loadPolicy(path: string): Policy {
  let text: string;
  try {
    text = readTrustedFile(path, { what: 'policy file', maxBytes: MAX_POLICY_SIZE }).toString('utf8');
  } catch (e) {
    if (e instanceof HotpatchError) throw e;
    throw new UsageError(GUARD_BAD_POLICY, `cannot read policy file ${path}: ${(e as Error).message}`, { cause: e });
  }
  return parsePolicy(text, path);
}

/** What a matcher is compared against. */
export interface ProcessIdentity {
  exe: string;
  /** /proc/PID/comm. */
  comm: string;
  /** Build-id of the main executable, lowercase hex, if known. */
  buildId?: string;
}

export function matchesProcess(m: ProcessMatcher, p: ProcessIdentity): boolean {
  if (m.exe !== undefined && m.exe !== p.exe) return false;
  if (m.name !== undefined && m.name !== p.comm && m.name !== basename(p.exe)) return false;
  if (m.buildId !== undefined && m.buildId !== p.buildId) return false;
  return true;
}

export function matchesAny(ms: readonly ProcessMatcher[], p: ProcessIdentity): boolean {
  return ms.some((m) => matchesProcess(m, p));
}

/** The action for a finding's structure code. */
export function actionFor(policy: Policy, code: StructureCode): GuardAction {
  return policy.actions[code] ?? policy.actions.default;
}

/** Whether a finding is severe enough to act on. */
export function shouldAct(policy: Policy, f: Finding): boolean {
  return severityRank(f.severity) >= severityRank(policy.actOnSeverity);
}

function moduleMatches(pattern: string, module: string | null): boolean {
  if (module === null) return false;
  return module === pattern || module.endsWith(pattern.startsWith('/') ? pattern : `/${pattern}`);
}

/** Whether the policy suppresses this finding (allow list, allowed breakpoints). */
export function isAllowed(policy: Policy, f: Finding, p: ProcessIdentity): boolean {
  if (f.kind === 'breakpoint') {
    if (policy.allowBreakpoints === true) return true;
    if (Array.isArray(policy.allowBreakpoints) && matchesAny(policy.allowBreakpoints, p)) return true;
  }
  return policy.allow.some(
    (a) =>
      (a.code === undefined || a.code === f.code) &&
      (a.kind === undefined || a.kind === f.kind) &&
      (a.module === undefined || moduleMatches(a.module, f.module)) &&
      (a.process === undefined || matchesProcess(a.process, p)),
  );
}
