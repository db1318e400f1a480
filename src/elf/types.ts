/** Data types returned by the ELF reader. Addresses and file offsets are bigint. */

/** The ELF header (Elf64_Ehdr), with gABI extended numbering already resolved. */
export interface ElfHeader {
  /** EI_CLASS (always ELFCLASS64 after a successful parse). */
  class: number;
  /** EI_DATA (always ELFDATA2LSB after a successful parse). */
  data: number;
  osabi: number;
  abiVersion: number;
  /** e_type: ET_REL, ET_EXEC, ET_DYN, ET_CORE. */
  type: number;
  /** e_machine: EM_X86_64 unless `allowAnyMachine` was given. */
  machine: number;
  version: number;
  /** Entry point vaddr. */
  entry: bigint;
  phoff: bigint;
  shoff: bigint;
  flags: number;
  ehsize: number;
  phentsize: number;
  /** Number of program headers (PN_XNUM resolved through section 0). */
  phnum: number;
  shentsize: number;
  /** Number of section headers (0 resolved through section 0). */
  shnum: number;
  /** Index of the section name string table (SHN_XINDEX resolved through section 0). */
  shstrndx: number;
}

/** A program header (Elf64_Phdr). */
export interface ElfProgramHeader {
  index: number;
  /** p_type: PT_LOAD, PT_DYNAMIC, ... */
  type: number;
  /** p_flags: PF_R | PF_W | PF_X. */
  flags: number;
  offset: bigint;
  vaddr: bigint;
  paddr: bigint;
  filesz: bigint;
  memsz: bigint;
  align: bigint;
}

/** A section header (Elf64_Shdr) with its name resolved. */
export interface ElfSection {
  index: number;
  name: string;
  /** sh_type: SHT_PROGBITS, SHT_RELA, ... */
  type: number;
  /** sh_flags: SHF_ALLOC | SHF_EXECINSTR | ... (exact below 2^53, which covers every defined flag). */
  flags: number;
  addr: bigint;
  offset: bigint;
  size: bigint;
  link: number;
  info: number;
  addralign: bigint;
  entsize: bigint;
}

/** The version attached to a dynamic symbol through .gnu.version (+ _d / _r). */
export interface ElfSymbolVersion {
  /** Version index from .gnu.version (without the hidden bit); 2 and above name a version. */
  index: number;
  /** Version name, e.g. "GLIBC_2.2.5". */
  name: string;
  /** The hidden bit: `sym@VER` (not the default version) rather than `sym@@VER`. */
  hidden: boolean;
  /** true when the version is defined by this file (.gnu.version_d), false when needed (.gnu.version_r). */
  defined: boolean;
  /** For a needed version: the file it is needed from (vn_file, e.g. "libc.so.6"). */
  file?: string;
}

/** A symbol of .symtab or .dynsym. */
export interface ElfSymbol {
  /** Index in its symbol table. */
  index: number;
  /**
   * The name as stored. Note: GNU ld stores undefined references in .symtab as "printf@GLIBC_2.2.5"
   * literally; .dynsym names never carry a version (see `version`).
   */
  name: string;
  /** st_value: a vaddr for defined symbols of ET_EXEC/ET_DYN, a section offset in ET_REL. */
  value: bigint;
  size: bigint;
  /** STT_*. */
  type: number;
  /** STB_*. */
  bind: number;
  /** STV_*. */
  visibility: number;
  /** Raw st_other. */
  other: number;
  /** Section index (SHN_XINDEX resolved through SHT_SYMTAB_SHNDX); SHN_UNDEF for undefined symbols. */
  shndx: number;
  /**
   * For STB_LOCAL symbols of .symtab: the name of the preceding STT_FILE symbol (the source file
   * the linker took the local from), so `static` functions with the same name stay apart.
   */
  file?: string;
  /** For .dynsym with symbol versioning: the version (absent for VER_NDX_LOCAL/VER_NDX_GLOBAL). */
  version?: ElfSymbolVersion;
  /** true when this symbol comes from the dynamic symbol table. */
  dynamic: boolean;
}

/** One entry of the dynamic section. `tag` is a DT_* number (exact below 2^53). */
export interface ElfDynamicEntry {
  tag: number;
  value: bigint;
}

/** The dynamic section, decoded. Table addresses are link-time vaddrs. */
export interface ElfDynamicInfo {
  entries: ElfDynamicEntry[];
  /** DT_NEEDED names in order. */
  needed: string[];
  soname?: string;
  rpath?: string;
  runpath?: string;
  /** DT_FLAGS (0 when absent). */
  flags: number;
  /** DT_FLAGS_1 (0 when absent). */
  flags1: number;
  /** DF_BIND_NOW, DF_1_NOW or DT_BIND_NOW: every PLT slot is bound at load time. */
  bindNow: boolean;
  /** Value of the first entry with `tag` (an address or a size), or undefined. */
  get(tag: number): bigint | undefined;
  pltgot?: bigint;
  jmprel?: bigint;
  pltrelsz?: bigint;
  /** DT_PLTREL: DT_RELA or DT_REL. */
  pltrel?: number;
  rela?: bigint;
  relasz?: bigint;
  rel?: bigint;
  relsz?: bigint;
  relr?: bigint;
  relrsz?: bigint;
  symtab?: bigint;
  strtab?: bigint;
  strsz?: bigint;
  hash?: bigint;
  gnuHash?: bigint;
  versym?: bigint;
  verdef?: bigint;
  verneed?: bigint;
  init?: bigint;
  fini?: bigint;
  initArray?: bigint;
  initArraySize?: bigint;
  finiArray?: bigint;
  finiArraySize?: bigint;
  preinitArray?: bigint;
  preinitArraySize?: bigint;
  textrel: boolean;
}

/** One relocation entry. For SHT_REL/DT_REL the addend is implicit (in place) and reported as 0n. */
export interface ElfRelocation {
  /** r_offset: vaddr of the relocated field (a section offset in ET_REL). */
  offset: bigint;
  /** R_X86_64_* number (name via `relocationTypeName`). */
  type: number;
  /** Symbol index into the linked symbol table (0 = none). */
  symbolIndex: number;
  /** The symbol `symbolIndex` names, when the index is not 0. */
  symbol?: ElfSymbol;
  addend: bigint;
}

/** A SHT_RELA / SHT_REL section with its entries. */
export interface ElfRelocationSection {
  section: ElfSection;
  /** true for SHT_RELA (explicit addends). */
  rela: boolean;
  /** The section the relocations apply to (sh_info), when sh_info names one (e.g. .text for .rela.text). */
  target?: ElfSection;
  relocations: ElfRelocation[];
}

/** Dynamic relocations found through the dynamic section (works without section headers). */
export interface ElfDynamicRelocations {
  /** DT_RELA / DT_RELASZ. May overlap `plt` in files where the linker made the ranges overlap. */
  rela: ElfRelocation[];
  /** DT_REL / DT_RELSZ (rare on x86-64). */
  rel: ElfRelocation[];
  /** DT_JMPREL / DT_PLTRELSZ (RELA or REL per DT_PLTREL). */
  plt: ElfRelocation[];
  /** DT_RELR / DT_RELRSZ decoded: vaddrs of 64-bit words to which the load bias is added. */
  relr: bigint[];
}

/** One ELF note. */
export interface ElfNote {
  name: string;
  type: number;
  desc: Uint8Array;
  /** File offset of the note header. */
  offset: bigint;
}

/** Result of a symbol lookup by address. */
export interface ElfAddressSymbol {
  symbol: ElfSymbol;
  /** `address - symbol.value`. */
  offset: bigint;
  /** true when the address lies inside [value, value + size). */
  contains: boolean;
}

/** Options of `parseElf`. */
export interface ElfParseOptions {
  /** Name of the file, used in error messages. */
  name?: string;
  /** Accept ELF64 little-endian files of any e_machine (default: only EM_X86_64). */
  allowAnyMachine?: boolean;
  /**
   * false: ignore the section header table (`sections` is empty), as the loader does. For a prefix
   * of a file holding only the headers and notes, or an image read from memory. Default true.
   * (Section 0 is still consulted for extended numbering when it lies inside the bytes.)
   */
  sectionHeaders?: boolean;
}

/** Options of a symbol lookup by name. */
export interface ElfSymbolQuery {
  /** Only local symbols whose STT_FILE is this name. */
  file?: string;
  /** Only dynamic symbols with this version name. */
  version?: string;
  /** Which table: 'symtab', 'dynsym', or 'any' (default: .symtab first, then .dynsym). */
  table?: 'symtab' | 'dynsym' | 'any';
  /** Only defined symbols (shndx != SHN_UNDEF). Default true. */
  defined?: boolean;
}
