/**
 * Prometheus metrics of the guard (text exposition format 0.0.4), served on 127.0.0.1 only.
 *
 * Names follow the Prometheus conventions (https://prometheus.io/docs/practices/naming/): one
 * `hotpatch_` prefix, base units (`_seconds`, `_bytes`), `_total` for counters, `_info` for the
 * build information gauge. Every labelled series exists from the start (value 0), so alert rules
 * on `increase(...)` see the first event. Before 0.2 the names were `hotpatch_guard_*`
 * (docs/guard.md lists the renames).
 */
import { createServer, type Server } from 'node:http';
import { UsageError } from '../errors.js';
import { ALL_STRUCTURES, SEVERITIES, STRUCTURE_NAMES, type Severity, type StructureCode } from './finding.js';
import { hotpatchVersion } from '../version.js';

/** Kinds of errors the guard counts (`hotpatch_errors_total{kind}`). */
export const GUARD_ERROR_KINDS = ['check', 'action', 'log', 'policy-reload'] as const;
export type GuardErrorKind = (typeof GUARD_ERROR_KINDS)[number];

const ACTIONS = ['log', 'stop', 'kill', 'restore'] as const;

/** Escapes a label value (exposition format: backslash, double quote, newline). */
function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Counters and gauges the guard updates. */
export class GuardMetrics {
  checksTotal = 0;
  /** Confirmed findings per structure code (all severities). */
  readonly findingsTotal = new Map<StructureCode, number>();
  /** Confirmed findings per `code|severity`. */
  readonly findingsBySeverity = new Map<string, number>();
  /** Actions performed, per `action|ok` (ok: "true"/"false"). */
  readonly actionsTotal = new Map<string, number>();
  readonly errorsTotal = new Map<GuardErrorKind, number>();
  bytesVerifiedTotal = 0;
  lastFullCycleSeconds = 0;
  processesWatched = 0;
  cyclesTotal = 0;
  /** Longest time (s) any (process, structure) item went unchecked, as last measured. */
  maxItemAgeSeconds = 0;
  /** 1 when the last policy (re)load succeeded. */
  policyLoadSuccess = 1;
  /** Unix time (s) of the last successful policy (re)load. */
  policyLoadTimestamp = Date.now() / 1000;
  policyReloadsTotal = 0;
  readonly startTimeSeconds = Date.now() / 1000;

  countFinding(code: StructureCode, severity: Severity = 'high'): void {
    this.findingsTotal.set(code, (this.findingsTotal.get(code) ?? 0) + 1);
    const k = `${code}|${severity}`;
    this.findingsBySeverity.set(k, (this.findingsBySeverity.get(k) ?? 0) + 1);
  }

  countAction(action: string, ok = true): void {
    const k = `${action}|${ok}`;
    this.actionsTotal.set(k, (this.actionsTotal.get(k) ?? 0) + 1);
  }

  countError(kind: GuardErrorKind): void {
    this.errorsTotal.set(kind, (this.errorsTotal.get(kind) ?? 0) + 1);
  }

  /** The metrics in Prometheus text format. */
  render(): string {
    const lines: string[] = [];
    const metric = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[string, number]>) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${name}${labels} ${v}`);
    };
    metric('hotpatch_build_info', 'gauge', 'Always 1; the labels say which hotpatch and Node.js run the guard.', [
      [`{version="${labelValue(hotpatchVersion())}",nodejs="${labelValue(process.versions.node)}"}`, 1],
    ]);
    metric('hotpatch_start_time_seconds', 'gauge', 'Unix time the guard started.', [['', this.startTimeSeconds]]);
    metric('hotpatch_checks_total', 'counter', 'Structure checks run (one process, one structure).', [['', this.checksTotal]]);
    metric(
      'hotpatch_findings_total',
      'counter',
      'Confirmed findings by protected structure and severity.',
      ALL_STRUCTURES.flatMap((c) =>
        SEVERITIES.map((s): [string, number] => [`{code="${c}",structure="${labelValue(STRUCTURE_NAMES[c])}",severity="${s}"}`, this.findingsBySeverity.get(`${c}|${s}`) ?? 0]),
      ),
    );
    metric(
      'hotpatch_actions_total',
      'counter',
      'Actions performed on confirmed findings, by action and whether it succeeded.',
      ACTIONS.flatMap((a) => (['true', 'false'] as const).map((ok): [string, number] => [`{action="${a}",ok="${ok}"}`, this.actionsTotal.get(`${a}|${ok}`) ?? 0])),
    );
    metric('hotpatch_errors_total', 'counter', 'Errors of the guard itself (a check that threw, a failed action, an unwritable log, a rejected policy reload).', GUARD_ERROR_KINDS.map((k) => [`{kind="${k}"}`, this.errorsTotal.get(k) ?? 0]));
    metric('hotpatch_verified_bytes_total', 'counter', 'Bytes of process memory compared with their expected content.', [['', this.bytesVerifiedTotal]]);
    metric('hotpatch_cycles_total', 'counter', 'Full cycles completed.', [['', this.cyclesTotal]]);
    metric('hotpatch_last_cycle_duration_seconds', 'gauge', 'Duration of the last full cycle over every (process, structure) item.', [['', this.lastFullCycleSeconds]]);
    metric('hotpatch_max_item_age_seconds', 'gauge', 'Longest time an item went unchecked (bounded by 2 x interval plus check time).', [['', this.maxItemAgeSeconds]]);
    metric('hotpatch_watched_processes', 'gauge', 'Processes currently protected.', [['', this.processesWatched]]);
    metric('hotpatch_policy_reloads_total', 'counter', 'Policy reloads requested (SIGHUP).', [['', this.policyReloadsTotal]]);
    metric('hotpatch_policy_last_reload_successful', 'gauge', '1 when the last policy load or reload succeeded, 0 when the running policy is older than the file.', [['', this.policyLoadSuccess]]);
    metric('hotpatch_policy_last_reload_success_timestamp_seconds', 'gauge', 'Unix time of the last successful policy load.', [['', this.policyLoadTimestamp]]);
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
