/** Starting the demo service and talking to it as a client would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { KeepAliveConnection } from '../load/http-client.js';

export interface RunningService {
  pid: number;
  port: number;
  child: ChildProcess;
}

/** Starts `binary` on a free loopback port with `workers` threads; resolves when it is listening. */
export function startService(binary: string, workers: number): Promise<RunningService> {
  const child = spawn(binary, ['0', String(workers)], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${binary} did not start listening within 10 s: ${out}`));
    }, 10_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /ready (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ pid: child.pid!, port: Number(m[1]), child });
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${binary} exited (${code ?? signal}) before listening: ${out}`));
    });
  });
}

export function stopService(s: RunningService | undefined): void {
  if (s && s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
}

/** The request that shows the bug: ask for 96 bytes of a 5-byte message. */
export const EXPLOIT_PATH = '/echo?msg=hello&len=96';

export interface Probe {
  /** Bytes the server sent back. */
  length: number;
  /** The body, printable (NUL runs collapsed, other control bytes as '.'). */
  printable: string;
  /** The server leaked the session token. */
  leaked: boolean;
}

/** Sends the exploit request on a new connection and describes the answer. */
export async function probe(port: number): Promise<Probe> {
  const conn = await KeepAliveConnection.open(port);
  try {
    const { body } = await conn.get(EXPLOIT_PATH);
    const text = body.toString('latin1');
    const printable = text.replace(/\0+/g, '·').replace(/[^\x20-\x7e·]/g, '.');
    return { length: body.length, printable, leaked: text.includes('SESSION-TOKEN') };
  } finally {
    conn.close();
  }
}
