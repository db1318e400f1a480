/**
 * Refusals of the builder: stable codes (scripts and tests rely on them), each with the symbol it is
 * about and a message that says what changed and what to do.
 */
import { RefusedError } from '../../errors.js';

/** Every reason the builder refuses a patch. */
export const RefusalCode = {
  /** A dynamic symbol is defined in the new build but not in the old one. */
  EXPORT_ADDED: 'REFUSED_EXPORT_ADDED',
  /** A dynamic symbol defined in the old build is gone. */
  EXPORT_REMOVED: 'REFUSED_EXPORT_REMOVED',
  /** A dynamic symbol changed type, size, binding or version. */
  EXPORT_CHANGED: 'REFUSED_EXPORT_CHANGED',
  /** The new build needs a library the old one does not (DT_NEEDED). */
  NEEDED_ADDED: 'REFUSED_NEEDED_ADDED',
  /** The new build imports a symbol the old one does not. */
  IMPORT_ADDED: 'REFUSED_IMPORT_ADDED',
  /** Compilation units of the new build whose name the old build lacks could not be paired by content. */
  UNITS_UNPAIRED: 'REFUSED_UNITS_UNPAIRED',
  /** A thread-local data object appears in the new build. */
  DATA_ADDED: 'REFUSED_DATA_ADDED',
  /** A writable or TLS data object of the old build is gone. */
  DATA_REMOVED: 'REFUSED_DATA_REMOVED',
  /** A writable or TLS data object changed size. */
  DATA_RESIZED: 'REFUSED_DATA_RESIZED',
  /** A writable or TLS data object has a new initial value. */
  DATA_REINITIALISED: 'REFUSED_DATA_REINITIALISED',
  /** The thread-local storage block changed size, alignment or the offset of a variable. */
  TLS_LAYOUT_CHANGED: 'REFUSED_TLS_LAYOUT_CHANGED',
  /** A struct/union used by a changed function changed size or member offsets (DWARF). */
  STRUCT_LAYOUT_CHANGED: 'REFUSED_STRUCT_LAYOUT_CHANGED',
  /** Bytes in a changed function do not decode as x86-64 instructions (data in code). */
  UNDECODABLE: 'REFUSED_UNDECODABLE',
  /** A branch lands inside an instruction of a changed function. */
  MID_INSTRUCTION_JUMP: 'REFUSED_MID_INSTRUCTION_JUMP',
  /** Code addresses inside a changed function are stored in data (computed goto tables...). */
  UNBOUNDED_INDIRECT_JUMP: 'REFUSED_UNBOUNDED_INDIRECT_JUMP',
  /** A short (rel8) branch leaves a changed function: it cannot reach the original from the arena. */
  REL8_EXIT: 'REFUSED_REL8_EXIT',
  /** A reference in new code cannot be bound to the running build. */
  UNRESOLVED_REFERENCE: 'REFUSED_UNRESOLVED_REFERENCE',
  /** The entry of a changed function is too small for a jump and has no padding. */
  TOO_SMALL: 'REFUSED_TOO_SMALL',
  /** A branch inside the function lands in the bytes the entry jump would overwrite. */
  ENTRY_BRANCH_TARGET: 'REFUSED_ENTRY_BRANCH_TARGET',
} as const;
export type RefusalCode = (typeof RefusalCode)[keyof typeof RefusalCode];

/** One reason to refuse. */
export interface Refusal {
  code: RefusalCode;
  /** The symbol concerned, as `name` or `name (file.c)`. */
  symbol: string;
  message: string;
}

/**
 * The builder refused the patch. `code` is the code of the first refusal; `refusals` lists all of
 * them (the builder reports every problem it found, not only the first).
 */
export class BuildRefusedError extends RefusedError {
  readonly refusals: Refusal[];
  constructor(refusals: Refusal[]) {
    const first = refusals[0]!;
    const more = refusals.length > 1 ? `\n${refusals.slice(1).map((r) => `  also: ${r.message} [${r.code}]`).join('\n')}` : '';
    super(first.code, `${first.message}${more}`);
    this.refusals = refusals;
  }
}
