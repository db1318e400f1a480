/** Signing keys, trusted keys configuration and the signature policy. */
export * from './keys.js';
export * from './signature.js';
export * from './policy.js';
