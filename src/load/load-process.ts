/** Parent side of the load generator: runs it in a separate Node.js process. */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadOptions, LoadStats } from './load-generator.js';

export class LoadProcess {
  private constructor(private readonly child: ChildProcess) {}

  static async start(options: LoadOptions): Promise<LoadProcess> {
    const worker = fileURLToPath(new URL('./load-worker.js', import.meta.url));
    const child = fork(worker, [JSON.stringify(options)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('exit', (code) => reject(new Error(`load generator exited (${code}) before starting`)));
    });
    return new LoadProcess(child);
  }

  /** Statistics of the phase since the previous call; starts a new phase. */
  stats(): Promise<LoadStats> {
    return this.request('stats');
  }

  async stop(): Promise<LoadStats> {
    const stats = await this.request('stop');
    await new Promise<void>((r) => (this.child.exitCode !== null ? r() : this.child.once('exit', () => r())));
    return stats;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }

  private request(cmd: string): Promise<LoadStats> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: { stats?: LoadStats }) => {
        if (m.stats) {
          this.child.off('exit', onExit);
          this.child.off('message', onMessage);
          resolve(m.stats);
        }
      };
      const onExit = () => reject(new Error('load generator exited'));
      this.child.on('message', onMessage);
      this.child.once('exit', onExit);
      this.child.send({ cmd });
    });
  }
}
