/** buildPatch in a worker thread: the caller's event loop keeps running, and an AbortSignal stops it. */
import { runWorkerJob } from '../../internal/worker-job.js';
import type { BuildOptions, BuildResult } from './build.js';

export interface AsyncBuildOptions extends BuildOptions {
  /** Aborting terminates the build at once; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Same result and errors as buildPatch (BuildRefusedError with every refusal), computed in a worker. */
export function buildPatchAsync(oldBytes: Uint8Array, newBytes: Uint8Array, options: AsyncBuildOptions = {}): Promise<BuildResult> {
  const { signal, progress, ...rest } = options;
  return runWorkerJob({ kind: 'build', oldBytes, newBytes, options: rest }, { ...(signal ? { signal } : {}), ...(progress ? { onProgress: progress } : {}) });
}
