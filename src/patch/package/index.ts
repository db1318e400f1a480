/** The patch package (`.hpk`): format, encoder/decoder, cold payload. */
export * from './codec.js';
export * from './cold.js';
export * from './file.js';
