/** Structure 10: sanctioned patches (placeholder until the engine's record reader lands). */
import type { ProcessContext } from '../context.js';
import type { Finding } from '../finding.js';

export function checkSanctioned(ctx: ProcessContext): Finding[] {
  void ctx;
  return [];
}
