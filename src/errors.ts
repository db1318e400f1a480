import type { ErrorCode } from './error-codes.js';

export type { ErrorCode } from './error-codes.js';

/**
 * One error base class for the whole library. Every error carries a stable `code` (scripts and
 * the CLI rely on it) and a message that tells the user what to do next.
 */
export class HotpatchError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Malformed or hostile ELF input. */
export class ElfError extends HotpatchError {}

/** A process cannot be inspected or controlled (dead, no permission, kernel thread, traced...). */
export class ProcessError extends HotpatchError {}

/** x86-64 code that cannot be decoded or re-encoded with confidence. */
export class X86Error extends HotpatchError {}

/** Malformed package, bad signature, untrusted signer. */
export class PackageError extends HotpatchError {}

/**
 * A patch (or one of its sites) is refused for a documented reason; nothing was changed.
 * The CLI maps this to exit code 3.
 */
export class RefusedError extends HotpatchError {}

/** Wrong command-line usage (exit code 2). */
export class UsageError extends HotpatchError {}

/**
 * A file or directory the tools rely on can be changed, replaced or redirected by a user other
 * than root and the invoking user (owner, mode, symbolic or hard link); nothing was read or
 * written through it. Codes: TRUST_UNSAFE (trust material: keys, policy, guard state),
 * PATH_UNSAFE (a file the tools write).
 */
export class UnsafePathError extends HotpatchError {
  /** The path whose owner, mode or type is the problem. */
  readonly path: string;
  constructor(code: ErrorCode, message: string, path: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.path = path;
  }
}
