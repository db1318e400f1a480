/** hotpatch library entry point: the typed API that the CLI, the tests and users program against. */
export * from './errors.js';
export * from './elf/index.js';
export * from './x86/index.js';
export * from './process/index.js';
export * from './patch/index.js';
export * from './guard/index.js';
export * from './scan/index.js';
export * from './fs/index.js';
export type * from './patch/plan.js';
