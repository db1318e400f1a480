export * from './inspect/index.js';
export * from './control/index.js';
