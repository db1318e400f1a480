/**
 * Prometheus metrics of the guard (text exposition format 0.0.4), served on 127.0.0.1 only.
 */
import { createServer, type Server } from 'node:http';
import { UsageError } from '../errors.js';
import { ALL_STRUCTURES, type StructureCode } from './finding.js';

/** Counters and gauges the guard updates. */
export class GuardMetrics {
  checksTotal = 0;
  readonly findingsTotal = new Map<StructureCode, number>();
  readonly actionsTotal = new Map<string, number>();
  bytesVerifiedTotal = 0;
  lastFullCycleSeconds = 0;
  processesWatched = 0;
  cyclesTotal = 0;
  /** Longest time (s) any (process, structure) item went unchecked, as last measured. */
  maxItemAgeSeconds = 0;

  countFinding(code: StructureCode): void {
    this.findingsTotal.set(code, (this.findingsTotal.get(code) ?? 0) + 1);
  }

  countAction(action: string): void {
    this.actionsTotal.set(action, (this.actionsTotal.get(action) ?? 0) + 1);
  }

  /** The metrics in Prometheus text format. */
  render(): string {
    const lines: string[] = [];
    const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[string, number]>) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
    };
    metric('hotpatch_guard_checks_total', 'counter', 'Structure checks run (one process, one structure).', [['', this.checksTotal]]);
    metric('hotpatch_guard_findings_total', 'counter', 'Confirmed findings by structure code.', ALL_STRUCTURES.map((c) => [`{code="${c}"}`, this.findingsTotal.get(c) ?? 0]));
    metric('hotpatch_guard_actions_total', 'counter', 'Actions performed on confirmed findings.', ['log', 'stop', 'kill', 'restore'].map((a) => [`{action="${a}"}`, this.actionsTotal.get(a) ?? 0]));
    metric('hotpatch_guard_bytes_verified_total', 'counter', 'Bytes of process memory compared with their expected content.', [['', this.bytesVerifiedTotal]]);
    metric('hotpatch_guard_last_full_cycle_seconds', 'gauge', 'Duration of the last full cycle over every (process, structure) item.', [['', this.lastFullCycleSeconds]]);
    metric('hotpatch_guard_cycles_total', 'counter', 'Full cycles completed.', [['', this.cyclesTotal]]);
    metric('hotpatch_guard_max_item_age_seconds', 'gauge', 'Longest time an item went unchecked (bounded by 2 x interval plus check time).', [['', this.maxItemAgeSeconds]]);
    metric('hotpatch_guard_processes_watched', 'gauge', 'Processes currently protected.', [['', this.processesWatched]]);
    return `${lines.join('\n')}\n`;
  }
}

/** Serves `metrics` at http://127.0.0.1:PORT/metrics. Resolves when listening. */
export function serveMetrics(metrics: GuardMetrics, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/metrics' || req.url === '/')) {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(metrics.render());
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found; try /metrics\n');
    }
  });
  return new Promise((res, rej) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EADDRINUSE') rej(new UsageError('USAGE_PORT_IN_USE', `--metrics ${port}: the port is already in use on 127.0.0.1 (another guard?): choose another port`));
      else if (e.code === 'EACCES') rej(new UsageError('USAGE_PORT_IN_USE', `--metrics ${port}: not allowed to listen on this port: choose a port above 1023 or run as root`));
      else rej(e);
    });
    server.listen(port, '127.0.0.1', () => {
      server.off('error', rej);
      res(server);
    });
  });
}
