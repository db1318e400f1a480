/**
 * The netlink process connector: the parser against hand-made datagrams (events, thread forks,
 * the acknowledgement, truncated and malformed input), and the real socket when this machine
 * offers it (root in the initial namespaces): a spawned process's exec and exit are reported.
 * Inside a network namespace it is refused with PROC_CONNECTOR_UNAVAILABLE (the agent's fallback).
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  listenRequest, openProcConnector, parseProcEvents, PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, PROC_EVENT_NONE,
  type ProcConnector, type ProcEvents,
} from '../../src/agent/proc-connector.js';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);

/** One netlink message carrying a proc_event `what` with `data` words. */
function message(what: number, data: number[]): Uint8Array {
  const len = 16 + 20 + 16 + data.length * 4;
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, len, true);
  dv.setUint16(4, 3, true);
  dv.setUint32(16, 1, true); // CN_IDX_PROC
  dv.setUint32(20, 1, true);
  dv.setUint16(32, 16 + data.length * 4, true);
  dv.setUint32(36, what, true);
  data.forEach((w, i) => dv.setUint32(52 + i * 4, w, true));
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

function parse(b: Uint8Array, len = b.byteLength): ProcEvents {
  const out: ProcEvents = { started: [], exited: [], overflow: false };
  parseProcEvents(b, len, out);
  return out;
}

describe('parseProcEvents', () => {
  it('reports process forks and execs, leader exits and the ack; ignores thread forks and exits', () => {
    const b = concat(
      message(PROC_EVENT_NONE, [0]),
      message(PROC_EVENT_FORK, [100, 100, 200, 200]), // process fork
      message(PROC_EVENT_FORK, [100, 100, 201, 100]), // new thread of 100
      message(PROC_EVENT_EXEC, [300, 300]),
      message(PROC_EVENT_EXIT, [201, 100, 0, 17]), // a thread exits
      message(PROC_EVENT_EXIT, [200, 200, 0, 17]),
      message(0x40, [1, 2]), // an event type it does not use
    );
    expect(parse(b)).toEqual({ started: [200, 300], exited: [200], ack: 0, overflow: false });
  });

  it('stops at a truncated or malformed message and keeps what came before', () => {
    const b = concat(message(PROC_EVENT_EXEC, [300, 300]), message(PROC_EVENT_EXEC, [400, 400]));
    for (let cut = 0; cut < b.byteLength; cut++) {
      const r = parse(b, cut);
      expect(r.started).toEqual(cut >= b.byteLength / 2 ? [300] : []);
    }
    const zero = concat(message(PROC_EVENT_EXEC, [300, 300]), new Uint8Array(20)); // length 0
    expect(parse(zero).started).toEqual([300]);
    const short = message(PROC_EVENT_FORK, [1, 1]); // a fork event without its child fields
    expect(parse(short).started).toEqual([]);
    const huge = message(PROC_EVENT_EXEC, [5, 5]);
    new DataView(huge.buffer).setUint32(0, 1 << 30, true);
    expect(parse(huge).started).toEqual([]);
  });

  it('a netlink error message means lost events', () => {
    const e = new Uint8Array(36);
    new DataView(e.buffer).setUint32(0, 36, true);
    new DataView(e.buffer).setUint16(4, 2, true);
    expect(parse(e).overflow).toBe(true);
  });

  it('the listen request is nlmsghdr + cn_msg + PROC_CN_MCAST_LISTEN', () => {
    const r = new DataView(listenRequest(7).buffer);
    expect([r.getUint32(0, true), r.getUint16(4, true), r.getUint32(12, true), r.getUint32(16, true), r.getUint32(20, true), r.getUint16(32, true), r.getUint32(36, true)])
      .toEqual([40, 3, 7, 1, 1, 4, 1]);
  });
});

async function tryOpen(): Promise<ProcConnector | null> {
  try {
    return await openProcConnector();
  } catch (e) {
    expect((e as { code?: string }).code).toBe('PROC_CONNECTOR_UNAVAILABLE');
    return null;
  }
}

describe('the process connector', () => {
  it('reports the exec and exit of a spawned process (when this machine offers the connector)', async (ctx) => {
    const c = await tryOpen();
    if (!c) return ctx.skip();
    try {
      const child = spawn('/bin/sleep', ['0.05'], { stdio: 'ignore' });
      await new Promise((r) => child.once('exit', r));
      const seen: ProcEvents = { started: [], exited: [], overflow: false };
      const deadline = Date.now() + 5000;
      while (!seen.exited.includes(child.pid!) && Date.now() < deadline) {
        const ev = c.drain();
        seen.started.push(...ev.started);
        seen.exited.push(...ev.exited);
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(seen.started).toContain(child.pid);
      expect(seen.exited).toContain(child.pid);
    } finally {
      c.close();
    }
  }, 30_000);

  it('in a network namespace it is unavailable: PROC_CONNECTOR_UNAVAILABLE, not a hang', async () => {
    const ns = `hp-cn-${process.pid}`;
    await run('ip', ['netns', 'add', ns]);
    try {
      const script = `import('${REPO_ROOT}/dist/src/agent/proc-connector.js').then((m) => m.openProcConnector()).then(() => console.log('open'), (e) => console.log(e.code))`;
      const { stdout } = await run('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { timeout: 20_000 });
      expect(stdout.trim()).toBe('PROC_CONNECTOR_UNAVAILABLE');
    } finally {
      await run('ip', ['netns', 'del', ns]);
    }
  }, 30_000);
});
