/**
 * The kernel's process events connector (NETLINK_CONNECTOR, CN_IDX_PROC): the kernel sends a
 * datagram for every fork, exec and exit, so the agent learns of a new process without walking
 * /proc. Bindings: `socket`, `bind`, `send`, `recv`, `close` from libc through koffi.
 *
 * The socket is non-blocking and drained by the agent's timer (`drain` never waits): a koffi call
 * is synchronous, and a blocking `recv` on the main thread would stall the event loop, while
 * koffi's `.async` form would park a libuv worker thread forever. An empty drain is one system call.
 *
 * Availability: only in the initial user and PID namespace (the kernel silently ignores a listen
 * request from any other — hence the wait for its acknowledgement), in the initial network
 * namespace (elsewhere the protocol does not exist), and with CAP_NET_ADMIN (else EPERM).
 * `openProcConnector` fails with PROC_CONNECTOR_UNAVAILABLE in all those cases and the agent polls.
 */
import { createRequire } from 'node:module';
import { HotpatchError } from '../errors.js';

// `require`, not `import`: an ESM import of CommonJS scans its source for export names first.
const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');

const AF_NETLINK = 16;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_CONNECTOR = 11;
const CN_IDX_PROC = 1;
const CN_VAL_PROC = 1;
const NLMSG_DONE = 3;
const NLMSG_ERROR = 2;
const PROC_CN_MCAST_LISTEN = 1;
const EAGAIN = 11;
const EINTR = 4;
const ENOBUFS = 105;

/** sizeof(struct nlmsghdr), sizeof(struct cn_msg), the proc_event header (what, cpu, timestamp_ns). */
const NLMSG_HDR = 16;
const CN_MSG_HDR = 20;
const PROC_EVENT_HDR = 16;
const EVENT_DATA = NLMSG_HDR + CN_MSG_HDR + PROC_EVENT_HDR;

export const PROC_EVENT_NONE = 0;
export const PROC_EVENT_FORK = 1;
export const PROC_EVENT_EXEC = 2;
export const PROC_EVENT_EXIT = 0x80000000;

/** What one drain of the socket told: processes to look at, processes gone, and lost events. */
export interface ProcEvents {
  /** Thread-group ids of new processes (fork of a process, not a thread) and of execs. */
  started: number[];
  /** Thread-group ids whose leader exited. */
  exited: number[];
  /** The acknowledgement of the listen request, when present: 0 = listening, else an errno. */
  ack?: number;
  /** Some events were lost (the socket buffer overflowed): the caller must walk /proc. */
  overflow: boolean;
}

/**
 * Parses the datagrams in `buf[0, len)` into `out`. Input from the kernel, but parsed defensively:
 * a truncated or malformed message ends the parse (the rest of the datagram is ignored), never
 * throws, and an unknown event type is skipped.
 */
export function parseProcEvents(buf: Uint8Array, len: number, out: ProcEvents): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, Math.min(len, buf.byteLength));
  let off = 0;
  while (off + NLMSG_HDR <= dv.byteLength) {
    const msgLen = dv.getUint32(off, true);
    const type = dv.getUint16(off + 4, true);
    if (msgLen < NLMSG_HDR || off + msgLen > dv.byteLength) return;
    if (type === NLMSG_ERROR) {
      out.overflow = true; // a netlink error about our socket: treat as lost events
    } else if (msgLen >= NLMSG_HDR + CN_MSG_HDR + PROC_EVENT_HDR && dv.getUint32(off + NLMSG_HDR, true) === CN_IDX_PROC) {
      const what = dv.getUint32(off + NLMSG_HDR + CN_MSG_HDR, true);
      const data = off + EVENT_DATA;
      const room = off + msgLen - data;
      if (what === PROC_EVENT_NONE && room >= 4) {
        out.ack = dv.getUint32(data, true); // struct { u32 err; } ack
      } else if (what === PROC_EVENT_FORK && room >= 16) {
        const childPid = dv.getUint32(data + 8, true);
        const childTgid = dv.getUint32(data + 12, true);
        if (childPid === childTgid) out.started.push(childTgid); // a new process, not a new thread
      } else if (what === PROC_EVENT_EXEC && room >= 8) {
        out.started.push(dv.getUint32(data + 4, true));
      } else if (what === PROC_EVENT_EXIT && room >= 8) {
        const pid = dv.getUint32(data, true);
        const tgid = dv.getUint32(data + 4, true);
        if (pid === tgid) out.exited.push(tgid);
      }
    }
    off += (msgLen + 3) & ~3; // NLMSG_ALIGN
  }
}

/** The listen request: nlmsghdr + cn_msg { id {CN_IDX_PROC, CN_VAL_PROC}, seq, ack, len 4 } + op. */
export function listenRequest(portId: number): Uint8Array {
  const b = new Uint8Array(NLMSG_HDR + CN_MSG_HDR + 4);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, b.byteLength, true);
  dv.setUint16(4, NLMSG_DONE, true);
  dv.setUint32(12, portId, true);
  dv.setUint32(NLMSG_HDR, CN_IDX_PROC, true);
  dv.setUint32(NLMSG_HDR + 4, CN_VAL_PROC, true);
  dv.setUint16(NLMSG_HDR + 16, 4, true);
  dv.setUint32(NLMSG_HDR + CN_MSG_HDR, PROC_CN_MCAST_LISTEN, true);
  return b;
}

interface Libc {
  socket: (domain: number, type: number, protocol: number) => number;
  bind: (fd: number, addr: Uint8Array, len: number) => number;
  send: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  recv: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  close: (fd: number) => number;
}
let fns: Libc | undefined;

function libc(): Libc {
  if (!fns) {
    const lib = koffi.load('libc.so.6');
    fns = {
      socket: lib.func('socket', 'int', ['int', 'int', 'int']) as Libc['socket'],
      bind: lib.func('bind', 'int', ['int', 'uint8_t *', 'uint32_t']) as Libc['bind'],
      send: lib.func('send', 'long', ['int', 'uint8_t *', 'size_t', 'int']) as Libc['send'],
      recv: lib.func('recv', 'long', ['int', '_Out_ uint8_t *', 'size_t', 'int']) as Libc['recv'],
      close: lib.func('close', 'int', ['int']) as Libc['close'],
    };
  }
  return fns;
}

function unavailable(why: string): HotpatchError {
  return new HotpatchError('PROC_CONNECTOR_UNAVAILABLE', `the netlink process connector is not available (${why}); the agent polls /proc instead (run it as root in the host's namespaces, with CAP_NET_ADMIN, to use it)`);
}

/** An open, listening process-events socket. */
export class ProcConnector {
  private readonly buf = new Uint8Array(64 * 1024);
  private closed = false;
  constructor(private readonly fd: number) {}

  /** Reads every datagram queued on the socket; returns at once when there is none. */
  drain(): ProcEvents {
    const out: ProcEvents = { started: [], exited: [], overflow: false };
    if (this.closed) return out;
    const c = libc();
    for (;;) {
      const n = c.recv(this.fd, this.buf, this.buf.byteLength, 0);
      if (n > 0) {
        parseProcEvents(this.buf, n, out);
        continue;
      }
      if (n === 0) return out;
      const err = koffi.errno();
      if (err === EINTR) continue;
      if (err === ENOBUFS) {
        out.overflow = true;
        continue;
      }
      if (err !== EAGAIN) out.overflow = true; // unexpected: let the caller walk /proc
      return out;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc().close(this.fd);
  }
}

/**
 * Opens the connector and subscribes to process events; waits up to `ackMs` for the kernel's
 * acknowledgement (no acknowledgement = not in the initial namespaces, events would never come).
 * Throws PROC_CONNECTOR_UNAVAILABLE.
 */
export async function openProcConnector(ackMs = 1000): Promise<ProcConnector> {
  let c: Libc;
  try {
    c = libc();
  } catch (e) {
    throw unavailable(`libc: ${(e as Error).message}`);
  }
  const fd = c.socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_CONNECTOR);
  if (fd < 0) throw unavailable(`socket: errno ${koffi.errno()}`);
  const conn = new ProcConnector(fd);
  try {
    const addr = new Uint8Array(12); // sockaddr_nl { family, pad, pid 0 = kernel assigns, groups }
    const dv = new DataView(addr.buffer);
    dv.setUint16(0, AF_NETLINK, true);
    dv.setUint32(8, CN_IDX_PROC, true);
    if (c.bind(fd, addr, addr.byteLength) !== 0) throw unavailable(`bind: errno ${koffi.errno()}`);
    const req = listenRequest(0);
    if (c.send(fd, req, req.byteLength, 0) !== req.byteLength) throw unavailable(`send: errno ${koffi.errno()}`);
    const deadline = Date.now() + ackMs;
    for (;;) {
      const ev = conn.drain();
      if (ev.ack !== undefined) {
        if (ev.ack !== 0) throw unavailable(`listen refused: errno ${ev.ack}`);
        return conn;
      }
      if (Date.now() >= deadline) throw unavailable('no acknowledgement: not in the initial user/PID namespace');
      await new Promise((r) => setTimeout(r, 10));
    }
  } catch (e) {
    conn.close();
    throw e;
  }
}
