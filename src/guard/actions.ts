/**
 * Reactions to confirmed findings: log, stop (SIGSTOP), kill (SIGKILL), restore. `restore` writes
 * the expected bytes back through the ptrace helper's freeze + writeMemoryChecked path (the write
 * happens only if memory still holds the bytes the finding saw), for module code (structure 0) and
 * import slots (structure 3) only; other structures fall back to `log`.
 */
import { freezeProcess } from '../process/index.js';
import type { Finding } from './finding.js';
import type { GuardAction } from './policy.js';
import type { GuardState } from './state.js';

/** What an action did. */
export interface ActionOutcome {
  action: GuardAction;
  /** What was really done (restore may fall back to log). */
  performed: GuardAction;
  ok: boolean;
  detail: string;
}

/** Kinds of findings `restore` can repair by writing the expected bytes back. */
const RESTORABLE = new Set(['inline-hook', 'modified', 'breakpoint', 'got-hook']);

/** Whether `restore` can repair this finding. */
export function canRestore(f: Finding): boolean {
  const kindOk = ((f.code === 0 || f.code === 3) && RESTORABLE.has(f.kind)) || (f.code === 10 && f.kind === 'patch-site-modified');
  return kindOk && f.address !== null && f.expected !== null && f.actual !== null && f.expected.length === f.actual.length && f.expected.length > 0;
}

/**
 * Writes a finding's expected bytes back. The process is frozen for the write; a thread whose
 * instruction pointer is inside the bytes makes it retry (thaw, wait, up to `attempts` times).
 */
export async function restoreFinding(f: Finding, state: GuardState, attempts = 20): Promise<ActionOutcome> {
  const base = { action: 'restore' as const, performed: 'restore' as const };
  if (!canRestore(f)) return { action: 'restore', performed: 'log', ok: false, detail: `structure ${f.code} (${f.kind}) cannot be restored by writing bytes; logged only` };
  const address = f.address!;
  const end = address + BigInt(f.expected!.length);
  for (let i = 0; i < attempts; i++) {
    const frozen = freezeProcess(f.pid, { timeoutMs: 2000 });
    let busy = false;
    try {
      busy = frozen.threads.some((t) => t.regs.rip > address && t.regs.rip < end);
      if (!busy) {
        frozen.writeMemoryChecked(address, f.actual!, f.expected!);
      }
    } finally {
      frozen.thaw();
    }
    if (!busy) {
      state.recordRestore({
        time: new Date().toISOString(), pid: f.pid, code: f.code, module: f.module, address: `0x${address.toString(16)}`,
        bytes: Buffer.from(f.expected!).toString('hex'), previous: Buffer.from(f.actual!).toString('hex'),
      });
      return { ...base, ok: true, detail: `wrote ${f.expected!.length} expected byte(s) back at 0x${address.toString(16)}` };
    }
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 40));
  }
  return { ...base, ok: false, detail: `a thread kept executing inside 0x${address.toString(16)}-0x${end.toString(16)}; not restored` };
}

/** Performs `action` for a confirmed finding. Never throws: failures are in the outcome. */
export async function performAction(action: GuardAction, f: Finding, state: GuardState): Promise<ActionOutcome> {
  try {
    switch (action) {
      case 'log':
        return { action, performed: 'log', ok: true, detail: 'logged' };
      case 'stop':
        process.kill(f.pid, 'SIGSTOP');
        return { action, performed: 'stop', ok: true, detail: `sent SIGSTOP to ${f.pid}` };
      case 'kill':
        process.kill(f.pid, 'SIGKILL');
        return { action, performed: 'kill', ok: true, detail: `sent SIGKILL to ${f.pid}` };
      case 'restore':
        return await restoreFinding(f, state);
    }
  } catch (e) {
    return { action, performed: action, ok: false, detail: (e as Error).message };
  }
}
