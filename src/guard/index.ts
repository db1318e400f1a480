/**
 * Patch protection: the expected state of every protected structure of a process (design.md
 * table, codes 0–10), one-shot verification (`verifyProcess`) and the long-running guard.
 */
export * from './finding.js';
export * from './policy.js';
export { GuardState, DEFAULT_STATE_DIR, GUARD_BAD_STATE } from './state.js';
export type { RecordedIdentity, CredentialBaseline, RestoreRecord } from './state.js';
export { DpkgChecksums, IdentityCache, hashFd } from './identity.js';
export type { FileIdentity, PackageChecksum } from './identity.js';
export { ImageCache, ModuleImage, EXPORT_SECTIONS } from './image.js';
export { ProcessContext, VerifierCaches, readUprobes } from './context.js';
export type { CheckOptions, Uprobe } from './context.js';
export { readLinkMap } from './checks/linkmap.js';
export type { LinkMapEntry, LinkMapResult } from './checks/linkmap.js';
export { recognisedRuntimes } from './checks/memory.js';
export type { JitRuntime } from './checks/memory.js';
export { verifyProcess, verifyProcesses, allProcessIds, runChecks, checkOptions, loadVerifierTrust } from './verify.js';
export type { VerifyOptions, VerifyResult } from './verify.js';
export { Guard, DEFAULT_INTERVAL_MS } from './guard.js';
export type { GuardOptions, GuardSelection, GuardEvent } from './guard.js';
export { GuardMetrics, serveMetrics } from './metrics.js';
export { performAction, restoreFinding, canRestore, type ActionContext } from './actions.js';
export type { ActionOutcome } from './actions.js';
export { sanctionedState } from './checks/sanctioned.js';
export type { SanctionedState, SanctionedSite } from './checks/sanctioned.js';
export { readSignalActions, signalName } from './checks/signals.js';
export type { SignalAction } from './checks/signals.js';
