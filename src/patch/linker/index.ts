/** Linker: places a patch's code and data in the arena and resolves its relocations (all before freezing). */
export * from './layout.js';
export * from './relocate.js';
export * from './resolve.js';
