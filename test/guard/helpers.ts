/** Shared helpers of the guard tests: build the fixtures, write target memory like an attacker. */
import { closeSync, openSync, writeSync } from 'node:fs';
import { compile, startTarget, type Target } from '../helpers/native.js';
import { verifyProcess, type Finding, type VerifyOptions } from '../../src/guard/index.js';

export interface Fixtures {
  victim: string;
  payload: string;
  preload: string;
  tracer: string;
  mt: string;
}

export async function buildFixtures(): Promise<Fixtures> {
  const [victim, payload, preload, tracer, mt] = await Promise.all([
    compile({ file: 'guard/victim.c', flags: ['-O2', '-g'], name: 'victim' }),
    compile({ file: 'guard/payload.c', flags: ['-O2', '-nostdlib', '-Wl,-e,payload'], shared: true, name: 'payload.so' }),
    compile({ file: 'guard/preload.c', flags: ['-O2'], shared: true, name: 'preload.so' }),
    compile({ file: 'guard/tracer.c', flags: ['-O2'], name: 'tracer' }),
    compile({ file: 'guard/mt.c', flags: ['-O2'], name: 'mt' }),
  ]);
  return { victim, payload, preload, tracer, mt };
}

/** Addresses the victim prints on its ready line. */
export interface VictimAddresses {
  compute: bigint;
  evil: bigint;
  fake_strtol: bigint;
  message: bigint;
  table: bigint;
  gotstrtol: bigint;
}

export async function startVictim(path: string, env?: NodeJS.ProcessEnv): Promise<{ t: Target; a: VictimAddresses }> {
  const t = await startTarget(path, [], env ? { env } : {});
  const line = /^ready (.*)$/m.exec(t.output())![1]!;
  const a: Record<string, bigint> = {};
  for (const kv of line.split(' ')) {
    const [k, v] = kv.split('=') as [string, string];
    a[k] = v === '(nil)' ? 0n : BigInt(v);
  }
  return { t, a: a as unknown as VictimAddresses };
}

/** Sends one command line and waits for the answer line starting with `answer`. */
export async function command(t: Target, cmd: string, answer = cmd.split(' ')[0]!): Promise<string> {
  const before = t.output().length;
  t.child.stdin!.write(`${cmd}\n`);
  const re = new RegExp(`^${answer}[^\\n]*\\n`, 'm');
  await t.waitFor({ test: (s: string) => re.test(s.slice(before)) } as unknown as RegExp);
  return re.exec(t.output().slice(before))![0].trim();
}

/** Writes bytes into a process like an attacker with ptrace rights: through /proc/PID/mem. */
export function pokeMemory(pid: number, address: bigint, bytes: Uint8Array): void {
  const fd = openSync(`/proc/${pid}/mem`, 'r+');
  try {
    const n = writeSync(fd, bytes, 0, bytes.length, Number(address));
    if (n !== bytes.length) throw new Error(`short write at 0x${address.toString(16)}`);
  } finally {
    closeSync(fd);
  }
}

export function u64le(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

/** `jmp rel32` from `from` to `to`. */
export function jmpRel32(from: bigint, to: bigint): Uint8Array {
  const b = new Uint8Array(5);
  b[0] = 0xe9;
  new DataView(b.buffer).setInt32(1, Number(to - (from + 5n)), true);
  return b;
}

/** `movabs rax, to; jmp rax`. */
export function movJmp(to: bigint): Uint8Array {
  const b = new Uint8Array(12);
  b[0] = 0x48;
  b[1] = 0xb8;
  new DataView(b.buffer).setBigUint64(2, to, true);
  b[10] = 0xff;
  b[11] = 0xe0;
  return b;
}

/** Verify with defaults suitable for tests (no ptrace unless asked). */
export async function findingsOf(pid: number, options: VerifyOptions = {}): Promise<Finding[]> {
  const r = await verifyProcess(pid, { allowPtrace: false, ...options });
  if (!r.checked) throw new Error(`process ${pid} was not checked: ${r.error}`);
  return r.findings;
}

/** One-line summaries for assertion messages. */
export function summary(fs: readonly Finding[]): string {
  return fs.map((f) => `[${f.code}/${f.kind}/${f.severity}] ${f.module ?? ''} ${f.symbol ?? ''} ${f.detail}`).join('\n');
}
