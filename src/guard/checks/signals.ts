/** Structure 7: signal handlers (placeholder until the ptrace helper lands). */
import type { ProcessContext } from '../context.js';
import type { Finding } from '../finding.js';

export function checkSignalHandlers(ctx: ProcessContext): Finding[] {
  void ctx;
  return [];
}
