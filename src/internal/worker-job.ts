/**
 * The long CPU-bound jobs of the library (diffing two builds, scanning a file) run in a worker
 * thread when called through their async form, so that a caller's event loop keeps running and an
 * AbortSignal can stop them at once. This module is the caller's side; worker-entry.ts runs a job.
 */
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import * as errors from '../errors.js';
import { BuildRefusedError, type Refusal } from '../patch/builder/refusal.js';
import type { BuildOptions, BuildResult } from '../patch/builder/build.js';
import type { ScanOptions, ScanResult } from '../scan/scan.js';

/** What a worker is asked to do: the arguments of buildPatch or scanFile, without callbacks. */
export type WorkerJob =
  | { kind: 'build'; oldBytes: Uint8Array; newBytes: Uint8Array; options: Omit<BuildOptions, 'progress'> }
  | { kind: 'scan'; path: string; options: Omit<ScanOptions, 'cache'> };

export type WorkerResult<J extends WorkerJob> = J extends { kind: 'build' } ? BuildResult : ScanResult;

/** An error as it crosses the thread boundary (classes do not survive structured cloning). */
export interface SerializedError {
  name: string;
  code?: string;
  message: string;
  refusals?: Refusal[];
}

export type WorkerMessage =
  | { type: 'progress'; message: string }
  | { type: 'result'; value: unknown }
  | { type: 'error'; error: SerializedError };

/** The worker's script: compiled JavaScript beside this module (from a source checkout: under dist/). */
function entryPath(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return here.replace(/worker-job\.js$/, 'worker-entry.js');
  return here.replace(/\/src\/internal\/worker-job\.ts$/, '/dist/src/internal/worker-entry.js');
}

const ERROR_CLASSES: Record<string, new (code: errors.ErrorCode, message: string) => errors.HotpatchError> = {
  HotpatchError: errors.HotpatchError, ElfError: errors.ElfError, ProcessError: errors.ProcessError, X86Error: errors.X86Error,
  PackageError: errors.PackageError, RefusedError: errors.RefusedError, UsageError: errors.UsageError,
};

/** The error class the job threw, rebuilt on this side (BuildRefusedError with its refusals). */
export function reviveError(e: SerializedError): Error {
  if (e.name === 'BuildRefusedError' && e.refusals && e.refusals.length > 0) return new BuildRefusedError(e.refusals);
  if (e.code !== undefined) {
    const Cls = ERROR_CLASSES[e.name] ?? errors.HotpatchError;
    return new Cls(e.code as errors.ErrorCode, e.message);
  }
  return new Error(e.message);
}

/**
 * Runs `job` in a new worker thread. `signal` terminates the worker and rejects with its reason;
 * `onProgress` receives the job's progress lines.
 */
export function runWorkerJob<J extends WorkerJob>(job: J, options: { signal?: AbortSignal; onProgress?: (message: string) => void } = {}): Promise<WorkerResult<J>> {
  const { signal, onProgress } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const worker = new Worker(entryPath(), { workerData: job });
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      fn();
    };
    const onAbort = () => finish(() => {
      void worker.terminate();
      reject(signal!.reason);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'progress') onProgress?.(m.message);
      else if (m.type === 'result') finish(() => resolve(m.value as WorkerResult<J>));
      else finish(() => reject(reviveError(m.error)));
    });
    worker.on('error', (e) => finish(() => reject(e)));
    worker.on('exit', (code) => finish(() => reject(new errors.HotpatchError('INTERNAL', `the worker thread ended (exit ${code}) before it answered`))));
  });
}
