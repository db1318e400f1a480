#!/usr/bin/env node
/**
 * Entry of the `hotpatch` command. It lowers its priority before anything else is loaded (module
 * loading is most of a short command's CPU time: see ./priority.ts), then runs the program.
 */
import { yieldCpuToTargets } from './priority.js';

yieldCpuToTargets();
await import('./program.js');
