/**
 * Load generator: keeps N keep-alive connections busy with one request each, checks every answer,
 * and records latencies. It runs in its own process (see load-worker.ts) so that the load and the
 * process doing the patching never share an event loop.
 */
import { KeepAliveConnection } from './http-client.js';

export interface LoadOptions {
  port: number;
  connections: number;
  /** Request path; every answer must have status 200 and this body. */
  path: string;
  expectBody: string;
}

export interface LoadStats {
  requests: number;
  failures: number;
  /** Latency percentiles in microseconds. */
  p50Micros: number;
  p99Micros: number;
  maxMicros: number;
  seconds: number;
  /** First few failure reasons, for diagnostics. */
  errors: string[];
}

export class LoadGenerator {
  private running = false;
  private latencies: number[] = [];
  private failures = 0;
  private errors: string[] = [];
  private phaseStart = process.hrtime.bigint();
  private loops: Promise<void>[] = [];

  constructor(private readonly options: LoadOptions) {}

  start(): void {
    this.running = true;
    this.phaseStart = process.hrtime.bigint();
    for (let i = 0; i < this.options.connections; i++) this.loops.push(this.connectionLoop());
  }

  /** Returns the statistics since the last call (or start) and starts a new phase. */
  takeStats(): LoadStats {
    const now = process.hrtime.bigint();
    const sorted = Float64Array.from(this.latencies).sort();
    const pick = (q: number) => (sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!) : 0);
    const stats: LoadStats = {
      requests: sorted.length,
      failures: this.failures,
      p50Micros: pick(0.5),
      p99Micros: pick(0.99),
      maxMicros: sorted.length ? Math.round(sorted[sorted.length - 1]!) : 0,
      seconds: Number(now - this.phaseStart) / 1e9,
      errors: this.errors.slice(0, 5),
    };
    this.latencies = [];
    this.failures = 0;
    this.errors = [];
    this.phaseStart = now;
    return stats;
  }

  async stop(): Promise<LoadStats> {
    this.running = false;
    await Promise.all(this.loops);
    return this.takeStats();
  }

  private fail(reason: string): void {
    this.failures++;
    if (this.errors.length < 20) this.errors.push(reason);
  }

  private async connectionLoop(): Promise<void> {
    let conn: KeepAliveConnection | undefined;
    while (this.running) {
      try {
        conn ??= await KeepAliveConnection.open(this.options.port);
        const t0 = process.hrtime.bigint();
        const res = await conn.get(this.options.path);
        const micros = Number(process.hrtime.bigint() - t0) / 1000;
        if (res.status !== 200 || res.body.toString('latin1') !== this.options.expectBody) {
          this.fail(`unexpected answer ${res.status} ${JSON.stringify(res.body.toString('latin1').slice(0, 40))}`);
        } else {
          this.latencies.push(micros);
        }
      } catch (e) {
        this.fail((e as Error).message);
        conn?.close();
        conn = undefined;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    conn?.close();
  }
}
