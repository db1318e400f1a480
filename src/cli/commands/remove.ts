import type { Command } from 'commander';
import { HotpatchError } from '../../errors.js';
import type { SetExitCode } from './index.js';

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('remove')
    .description('(not yet implemented)')
    .allowUnknownOption()
    .action(() => {
      throw new HotpatchError('NOT_IMPLEMENTED', '`hotpatch remove` is not implemented yet');
    });
}
