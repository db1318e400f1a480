/** The worker thread's side of worker-job.ts: runs one job and posts its result or its error. */
import { parentPort, workerData } from 'node:worker_threads';
import { HotpatchError } from '../errors.js';
import { buildPatch } from '../patch/builder/build.js';
import { BuildRefusedError } from '../patch/builder/refusal.js';
import { scanFile } from '../scan/scan.js';
import type { SerializedError, WorkerJob, WorkerMessage } from './worker-job.js';

function post(m: WorkerMessage): void {
  parentPort!.postMessage(m);
}

function serialize(e: unknown): SerializedError {
  if (e instanceof BuildRefusedError) return { name: 'BuildRefusedError', code: e.code, message: e.message, refusals: e.refusals };
  if (e instanceof HotpatchError) return { name: e.name, code: e.code, message: e.message };
  return { name: 'Error', message: e instanceof Error ? e.message : String(e) };
}

const job = workerData as WorkerJob;
try {
  const value = job.kind === 'build'
    ? buildPatch(job.oldBytes, job.newBytes, { ...job.options, progress: (message) => post({ type: 'progress', message }) })
    : scanFile(job.path, job.options);
  post({ type: 'result', value });
} catch (e) {
  post({ type: 'error', error: serialize(e) });
}
