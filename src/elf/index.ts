/** ELF64 reader (x86-64): headers, sections, segments, symbols, versions, dynamic, relocations, notes. */
export * from './constants.js';
export { ElfErrorCode, MAX_STRING_LENGTH } from './bytes.js';
export { ElfFile, parseElf } from './elf-file.js';
export { DEFAULT_DEBUG_DIRS, debugFilePath, findDebugFile } from './debug.js';
export type * from './types.js';
export {
  readDwarf,
  DwarfErrorCode,
  type DwarfInfo,
  type DwarfStruct,
  type DwarfMember,
  type DwarfFunction,
  type DwarfUnit,
  type DwarfReadOptions,
} from './dwarf.js';
export {
  parseEhFrame,
  parseLsda,
  encodedSize,
  EhFrameErrorCode,
  DW_EH_PE_indirect,
  DW_EH_PE_pcrel,
  DW_EH_PE_omit,
  type CieRecord,
  type FdeRecord,
  type EncodedPointer,
  type LsdaInfo,
} from './eh-frame.js';
