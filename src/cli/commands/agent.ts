/**
 * `hotpatch agent`: the long-running service that keeps every process of a stored patch's target
 * patched (see src/agent). Logs one JSON line per action on stdout; tells systemd it is ready
 * (Type=notify, $NOTIFY_SOCKET) after its first complete cycle; stops on SIGTERM/SIGINT.
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { collect, parseTimeoutOption } from '../options.js';
import { progress } from '../output.js';
import type { SetExitCode } from './index.js';

interface AgentCliOptions {
  store?: string;
  trust: string[];
  interval: string;
  discovery: string;
  rescan: string;
  timeout: string;
  metrics?: string;
  metricsHost: string;
  statusFile?: string;
  json?: boolean;
}

function parsePort(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UsageError('USAGE_BAD_PORT', `--metrics ${text} is not a port number`);
  return n;
}

export function register(program: Command, setExitCode: SetExitCode): void {
  void setExitCode;
  program
    .command('agent')
    .description('keep every stored patch applied to every process that maps its target, new ones included; remove withdrawn patches')
    .option('--store <DIR>', 'store directory (default: $HOTPATCH_STORE, else /var/lib/hotpatch/store)')
    .option('--trust <PUBFILE>', 'trusted public key (repeatable; else HOTPATCH_TRUSTED_KEYS, else /etc/hotpatch/trusted.d/*.pub)', collect, [] as string[])
    .option('--interval <S>', 'how often new processes are looked for: process-connector events read, or /proc polled (seconds)', '0.2')
    .option('--discovery <MODE>', "how new processes are found: 'auto' (the netlink process connector when available, else /proc polling) or 'poll'", 'auto')
    .option('--rescan <S>', 'how often every process and the store are checked again (seconds)', '5')
    .option('--timeout <S>', 'how long one attempt waits for a busy function before backing off (seconds)', '1')
    .option('--metrics <PORT>', 'serve Prometheus metrics at /metrics and the status at /status on PORT')
    .option('--metrics-host <ADDR>', 'address to serve metrics on', '127.0.0.1')
    .option('--status-file <PATH>', 'where the status for `hotpatch status` is published (default $HOTPATCH_AGENT_STATUS, else /run/hotpatch/agent-status.json)')
    .option('--json', 'accepted for uniformity: the log is always one JSON line per action')
    .addHelpText('after', '\nRun it as the systemd service deploy/hotpatch-agent.service (Type=notify).\n\nExample:\n  hotpatch agent --metrics 9464\n')
    .action(async (opts: AgentCliOptions) => {
      const { Agent, sdNotify, serveAgentHttp } = await import('../../agent/index.js');
      const pollMs = parseTimeoutOption(opts.interval, '--interval');
      const rescanMs = parseTimeoutOption(opts.rescan, '--rescan');
      if (pollMs < 10) throw new UsageError('USAGE_BAD_TIMEOUT', '--interval must be at least 0.01 s');
      if (opts.discovery !== 'auto' && opts.discovery !== 'poll') throw new UsageError('USAGE_BAD_DISCOVERY', `--discovery ${opts.discovery}: use 'auto' or 'poll'`);
      const agent = new Agent({
        ...(opts.store ? { storeDir: opts.store } : {}), trustFiles: opts.trust, pollMs, rescanMs: Math.max(rescanMs, pollMs), discovery: opts.discovery,
        timeoutMs: parseTimeoutOption(opts.timeout), ...(opts.statusFile !== undefined ? { statusFile: opts.statusFile } : {}),
      });
      const ac = new AbortController();
      const stop = (sig: string) => {
        progress(`hotpatch agent: ${sig}: stopping`);
        sdNotify('STOPPING=1');
        ac.abort();
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      const server = opts.metrics !== undefined ? await serveAgentHttp(() => agent.metrics.render(), () => agent.snapshot(), parsePort(opts.metrics), opts.metricsHost) : undefined;
      try {
        await agent.run(ac.signal, () => {
          const s = agent.snapshot();
          sdNotify(`READY=1\nSTATUS=watching ${s.patches.length} stored patch(es)`);
        });
      } finally {
        agent.metrics.up = 0;
        server?.close();
      }
    });
}
