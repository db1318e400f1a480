/** hotpatch library entry point: the typed API that the CLI, the tests and users program against. */
export * from './errors.js';
