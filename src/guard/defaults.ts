// The guard's defaults and action names, in a module without imports so that the CLI's help text
// can show them without loading the policy parser, the state store or the metrics server.

/** Default guard cycle length. */
export const DEFAULT_INTERVAL_MS = 10_000;

/** What the guard does on a confirmed finding. */
export type GuardAction = 'log' | 'stop' | 'kill' | 'restore';
export const GUARD_ACTIONS: readonly GuardAction[] = ['log', 'stop', 'kill', 'restore'];

/** Where first-seen identities, credential baselines and restores are kept. */
export const DEFAULT_STATE_DIR = '/var/lib/hotpatch/guard';
