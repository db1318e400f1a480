import type { Command } from 'commander';
import { register as scanCommand } from './scan.js';
import { register as buildCommand } from './build.js';
import { register as keygenCommand } from './keygen.js';
import { register as signCommand } from './sign.js';
import { register as inspectCommand } from './inspect.js';
import { register as applyCommand } from './apply.js';
import { register as removeCommand } from './remove.js';
import { register as listCommand } from './list.js';
import { register as recoverCommand } from './recover.js';
import { register as verifyCommand } from './verify.js';
import { register as guardCommand } from './guard.js';
import { register as demoCommand } from './demo.js';
import { register as completionCommand } from './completion.js';
import { register as storeCommand } from './store.js';
import { register as agentCommand } from './agent.js';
import { register as statusCommand } from './status.js';
import { register as symbolsCommand } from './symbols.js';

/** Sets the process exit code a command decided on (e.g. 5 for verify findings). */
export type SetExitCode = (code: number) => void;

/** Each command lives in its own module (src/cli/commands/NAME.ts) and registers itself here. */
export function registerCommands(program: Command, setExitCode: SetExitCode): void {
  scanCommand(program, setExitCode);
  buildCommand(program, setExitCode);
  keygenCommand(program, setExitCode);
  signCommand(program, setExitCode);
  inspectCommand(program, setExitCode);
  applyCommand(program, setExitCode);
  removeCommand(program, setExitCode);
  listCommand(program, setExitCode);
  recoverCommand(program, setExitCode);
  verifyCommand(program, setExitCode);
  guardCommand(program, setExitCode);
  storeCommand(program, setExitCode);
  agentCommand(program, setExitCode);
  statusCommand(program, setExitCode);
  symbolsCommand(program, setExitCode);
  demoCommand(program, setExitCode);
  completionCommand(program, setExitCode);
}
