/** File-system boundaries against other local users: safe path walks, safe reads, safe writes. */
export * from './path-check.js';
export * from './safe-read.js';
export * from './safe-write.js';
