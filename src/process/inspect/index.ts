/** Read-only process inspector: /proc parsing, memory reads, mapped ELF modules. */
export * from './errors.js';
export * from './procfs.js';
export * from './memory.js';
export * from './modules.js';
export * from './process.js';
