/** ELF64 reader (x86-64): headers, sections, segments, symbols, versions, dynamic, relocations, notes. */
export * from './constants.js';
export { ElfErrorCode, MAX_STRING_LENGTH } from './bytes.js';
export { ElfFile, parseElf } from './elf-file.js';
export type * from './types.js';
