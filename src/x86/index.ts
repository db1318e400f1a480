/**
 * x86-64 layer over iced-x86: decode functions into plain data, find branch targets and RIP-relative
 * references, classify hotpatchable entries, encode the jumps the engine writes, describe hooks.
 * No iced-x86 type is exported.
 */
export {
  decodeFunction,
  iterateInstructions,
  decodeAt,
  formatInsn,
  allValid,
  findBranchTargets,
  findRipReferences,
  branchesInto,
} from './decode.js';
export type { Insn, InsnField, InsnFields, MemoryRef, FlowKind, DecodeOptions, BranchRef, RipRef } from './decode.js';
export {
  encodeJmpRel32,
  encodeJmpShort,
  encodeAbsJmp,
  canJmpRel32,
  JMP_REL32_SIZE,
  JMP_SHORT_SIZE,
  ABS_JMP_SIZE,
} from './encode.js';
export { classifyEntry } from './entry.js';
export type { EntryInput, EntryClass, EntryKind, EntryForm } from './entry.js';
export { describeHook } from './hook.js';
export type { HookInfo, HookKind } from './hook.js';
export { reencodeAt, maskedBytes } from './reencode.js';
export type { Reencoded, MaskOptions } from './reencode.js';
export { classifyModuleEntries } from './module.js';
export type { ModuleFunction, ModuleEntryClass, ClassifyModuleOptions } from './module.js';
export { planLiveSwitch, switchSkippable, CACHE_LINE, MAX_LIVE_SWITCH_BYTES } from './live-switch.js';
export type { LiveSwitchInput, LiveSwitchPlan, LiveSwitchWrite } from './live-switch.js';
