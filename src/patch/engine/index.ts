/**
 * The live patch engine: apply, remove, stack, list and recover patches in running processes,
 * with the in-process record as the single source of truth.
 */
export { applyPatch, findTargetModule, type ApplyOptions, type ApplyResult } from './apply.js';
export { removePatch, type RemoveOptions, type RemoveResult } from './remove.js';
export { repairPatch, type RepairOptions, type RepairResult } from './repair.js';
export { recoverProcess, type RecoverOptions, type RecoverResult, type RecoverAction } from './recover.js';
export { listPatches, type ListedPatch, type ListedSite, type ProcessPatches } from './list.js';
export * from './record.js';
export { findRecordMapping, readRecordFromMappings, RecordStore } from './record-store.js';
