/**
 * Child-process entry of the load generator. Started with fork(); talks over the IPC channel:
 *   parent → { cmd: 'stats' }  child → { stats }   (statistics of the phase since the last call)
 *   parent → { cmd: 'stop' }   child → { stats, final: true } and exits
 * Options come as one JSON argument (LoadOptions).
 */
import { LoadGenerator, type LoadOptions } from './load-generator.js';

const options = JSON.parse(process.argv[2] ?? '{}') as LoadOptions;
const generator = new LoadGenerator(options);
generator.start();
process.send?.({ started: true });
process.on('message', (m: { cmd?: string }) => {
  if (m.cmd === 'stats') process.send?.({ stats: generator.takeStats() });
  if (m.cmd === 'stop') {
    void generator.stop().then((stats) => {
      process.send?.({ stats, final: true }, () => process.exit(0));
    });
  }
});
process.on('disconnect', () => process.exit(0));
