/** `hotpatch completion bash`: prints a bash completion script generated from the command tree. */
import { Argument, type Command } from 'commander';
import { bashCompletion } from '../completion.js';
import { printJson } from '../output.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('completion')
    .description('print a shell completion script (bash) covering every command and its options')
    .addArgument(new Argument('<SHELL>', 'the shell').choices(['bash']))
    .option('--json', 'print {"shell","script"} instead of the script')
    .addHelpText('after', '\nExamples:\n  source <(hotpatch completion bash)\n  hotpatch completion bash > /usr/share/bash-completion/completions/hotpatch\n')
    .action((shell: string, opts: { json?: boolean }) => {
      const script = bashCompletion(program);
      if (opts.json) printJson({ shell, script });
      else process.stdout.write(script);
    });
}
