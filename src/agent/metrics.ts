/**
 * Prometheus metrics of `hotpatch agent` (text exposition format 0.0.4), served on 127.0.0.1 by
 * default: processes patched / pending / failed per stored patch, apply and remove latency
 * histograms, actions by result, and `hotpatch_agent_up`.
 */
import { createServer, type Server } from 'node:http';

/** Histogram buckets for apply/remove latency, seconds (an apply is typically a few ms). */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

/** A Prometheus histogram (cumulative buckets, sum, count). */
export class Histogram {
  readonly counts = new Array<number>(LATENCY_BUCKETS.length).fill(0);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    LATENCY_BUCKETS.forEach((b, i) => {
      if (seconds <= b) this.counts[i]!++;
    });
  }

  render(name: string, lines: string[]): void {
    LATENCY_BUCKETS.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${name}_bucket{le="+Inf"} ${this.count}`, `${name}_sum ${this.sum}`, `${name}_count ${this.count}`);
  }
}

/** Per-patch process counts, as the agent last saw them. */
export interface PatchCounts {
  patched: number;
  pending: number;
  failed: number;
}

/** The agent's metrics. */
export class AgentMetrics {
  up = 1;
  readonly apply = new Histogram();
  readonly remove = new Histogram();
  readonly actions = new Map<string, number>();
  perPatch = new Map<string, PatchCounts>();
  cycles = 0;
  processesWatched = 0;

  countAction(action: string, result: string): void {
    const k = `action="${action}",result="${result}"`;
    this.actions.set(k, (this.actions.get(k) ?? 0) + 1);
  }

  render(): string {
    const lines: string[] = [];
    const head = (name: string, type: string, help: string) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    head('hotpatch_agent_up', 'gauge', 'The agent is running (1).');
    lines.push(`hotpatch_agent_up ${this.up}`);
    for (const [state, help] of [
      ['patched', 'Processes that map the patch target and have the stored patch applied.'],
      ['pending', 'Processes the agent is still trying to patch (busy target: retried with back-off).'],
      ['failed', 'Processes the patch could not be applied to (see hotpatch status for the reason).'],
    ] as const) {
      const name = `hotpatch_agent_processes_${state}`;
      head(name, 'gauge', help);
      for (const [id, c] of [...this.perPatch].sort()) lines.push(`${name}{patch="${id}"} ${c[state]}`);
    }
    head('hotpatch_agent_apply_seconds', 'histogram', 'Time to apply a patch to one process (engine call, lock wait included).');
    this.apply.render('hotpatch_agent_apply_seconds', lines);
    head('hotpatch_agent_remove_seconds', 'histogram', 'Time to remove a patch from one process.');
    this.remove.render('hotpatch_agent_remove_seconds', lines);
    head('hotpatch_agent_actions_total', 'counter', 'Actions by kind and result.');
    for (const [k, v] of [...this.actions].sort()) lines.push(`hotpatch_agent_actions_total{${k}} ${v}`);
    head('hotpatch_agent_cycles_total', 'counter', 'Reconciliation cycles run.');
    lines.push(`hotpatch_agent_cycles_total ${this.cycles}`);
    head('hotpatch_agent_processes_watched', 'gauge', 'Processes that map the target of a stored or withdrawn patch.');
    lines.push(`hotpatch_agent_processes_watched ${this.processesWatched}`);
    return `${lines.join('\n')}\n`;
  }
}

/**
 * Serves `render()` at http://HOST:PORT/metrics and a JSON `status()` at /status (what
 * `hotpatch status --agent-url` and health checks read). Resolves with the server once listening.
 */
export function serveAgentHttp(render: () => string, status: () => unknown, port: number, host = '127.0.0.1'): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/metrics' || req.url === '/')) {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(render());
    } else if (req.method === 'GET' && req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify(status())}\n`);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found; try /metrics or /status\n');
    }
  });
  return new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(port, host, () => {
      server.off('error', rej);
      res(server);
    });
  });
}
