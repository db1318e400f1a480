/** scanFile in a worker thread: the caller's event loop keeps running, and an AbortSignal stops it. */
import { runWorkerJob } from '../internal/worker-job.js';
import type { ScanOptions, ScanResult } from './scan.js';

export interface AsyncScanOptions extends Omit<ScanOptions, 'cache'> {
  /** Aborting terminates the scan at once; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Same result and errors as scanFile, computed in a worker (no shared cache). */
export function scanFileAsync(path: string, options: AsyncScanOptions = {}): Promise<ScanResult> {
  const { signal, ...rest } = options;
  return runWorkerJob({ kind: 'scan', path, options: rest }, signal ? { signal } : {});
}
