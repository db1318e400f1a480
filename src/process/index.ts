export * from './inspect/index.js';
