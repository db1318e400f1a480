import type { Command } from 'commander';

/** Sets the process exit code a command decided on (e.g. 5 for verify findings). */
export type SetExitCode = (code: number) => void;

/** Each command lives in its own module and registers itself here. */
export function registerCommands(program: Command, setExitCode: SetExitCode): void {
  void program;
  void setExitCode;
}
