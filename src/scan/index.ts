/** `hotpatch scan` library: hotpatchable functions of ELF files and running processes. */
export * from './scan.js';
export * from './async.js';
