/** `hotpatch agent` and `hotpatch status`: keep stored patches applied on a host. */
export * from './agent.js';
export * from './metrics.js';
export * from './notify.js';
export * from './proc-connector.js';
export * from './status.js';
