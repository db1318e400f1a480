/** The patch store: the packages a host should have applied. */
export * from './store.js';
