export * from './package/index.js';
export * from './trust/index.js';
export * from './engine/index.js';
export * from './updater/index.js';
export * from './builder/index.js';
export * from './debug/index.js';
