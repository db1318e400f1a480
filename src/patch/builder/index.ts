/** The patch builder: diff two builds of one program or library into a patch plan. */
export { buildPatch } from './build.js';
export { buildPatchAsync, type AsyncBuildOptions } from './async.js';
export type { BuildOptions, BuildResult, BuildReport, ChangedFunctionReport } from './build.js';
export { BuildRefusedError, RefusalCode } from './refusal.js';
export type { Refusal } from './refusal.js';
export { BuildImage, displayKey } from './image.js';
export type { FunctionInfo, ObjectInfo, RefTarget } from './image.js';
