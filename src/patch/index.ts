export * from './package/index.js';
export * from './trust/index.js';
export * from './engine/index.js';
