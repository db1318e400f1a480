/**
 * The updater: what an operator runs. Applies a package to every process of its target image
 * (hot), installs the fixed file on disk (cold), removes, lists and recovers — over many processes
 * at once with a bound, never two operations on one process at a time.
 */
export * from './result.js';
export * from './run.js';
export * from './discover.js';
export * from './package.js';
export * from './cold.js';
export * from './apply.js';
export * from './remove.js';
export * from './recover.js';
export * from './list.js';
