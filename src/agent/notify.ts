/**
 * sd_notify(3) for `hotpatch agent` under systemd `Type=notify`: one datagram ("READY=1",
 * "STOPPING=1", "STATUS=...") to the unix datagram socket named by $NOTIFY_SOCKET.
 *
 * Node has no unix datagram sockets, and `systemd-notify` run as a child is unreliable (systemd
 * attributes the message by the sender's PID, which is a short-lived helper, not the service's
 * main process). So this module binds `socket`, `sendto` and `close` from libc through koffi
 * (like ./proc-connector.ts; the engine's bindings are in src/process/ptrace/ffi.ts). Every
 * call is synchronous and allocation-free after the first.
 */
import { createRequire } from 'node:module';

// `require`, not `import`: an ESM import of CommonJS scans its source for export names first.
const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
/** sizeof(struct sockaddr_un): sa_family_t (2 bytes) + sun_path[108]. */
const SOCKADDR_UN_SIZE = 110;

let fns: {
  socket: (domain: number, type: number, protocol: number) => number;
  sendto: (fd: number, buf: Uint8Array, len: number, flags: number, addr: Uint8Array, addrlen: number) => number;
  close: (fd: number) => number;
} | undefined;

function libc(): NonNullable<typeof fns> {
  if (!fns) {
    const lib = koffi.load('libc.so.6');
    fns = {
      socket: lib.func('socket', 'int', ['int', 'int', 'int']) as NonNullable<typeof fns>['socket'],
      sendto: lib.func('sendto', 'long', ['int', 'uint8_t *', 'size_t', 'int', 'uint8_t *', 'uint32_t']) as NonNullable<typeof fns>['sendto'],
      close: lib.func('close', 'int', ['int']) as NonNullable<typeof fns>['close'],
    };
  }
  return fns;
}

/**
 * Encodes a socket path as `struct sockaddr_un`: a leading "@" names an abstract socket (first path
 * byte NUL, length without a terminator), else a filesystem path with its NUL terminator.
 * Returns the buffer and the address length to pass, or null when the path does not fit.
 */
export function sockaddrUn(path: string): { addr: Uint8Array; length: number } | null {
  const abstract = path.startsWith('@');
  const bytes = new TextEncoder().encode(abstract ? path.slice(1) : path);
  const room = SOCKADDR_UN_SIZE - 2 - (abstract ? 1 : 1);
  if (bytes.byteLength === 0 || bytes.byteLength > room) return null;
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(bytes, abstract ? 3 : 2);
  return { addr, length: 2 + (abstract ? 1 + bytes.byteLength : bytes.byteLength + 1) };
}

/**
 * Sends `state` (e.g. "READY=1\nSTATUS=watching 3 patches") to $NOTIFY_SOCKET. Returns false when
 * the variable is unset (not started by systemd with Type=notify) or the send failed; never throws.
 */
export function sdNotify(state: string, env: Readonly<Record<string, string | undefined>> = process.env): boolean {
  const path = env.NOTIFY_SOCKET;
  if (!path) return false;
  const a = sockaddrUn(path);
  if (!a) return false;
  try {
    const c = libc();
    const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    try {
      const msg = new TextEncoder().encode(state);
      return c.sendto(fd, msg, msg.byteLength, MSG_NOSIGNAL, a.addr, a.length) === msg.byteLength;
    } finally {
      c.close(fd);
    }
  } catch {
    return false;
  }
}
