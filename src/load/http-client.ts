/**
 * A minimal HTTP/1.1 keep-alive client over one TCP connection, enough for the load generator and
 * the demo: one request in flight at a time, responses framed by Content-Length.
 */
import { connect, type Socket } from 'node:net';

export interface HttpResponse {
  status: number;
  body: Buffer;
}

export class KeepAliveConnection {
  private readonly socket: Socket;
  private buffer: Buffer = Buffer.alloc(0);
  private pending: { resolve: (r: HttpResponse) => void; reject: (e: Error) => void } | undefined;
  private closedError: Error | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, d]) : d;
      this.tryComplete();
    });
    const fail = (e: Error) => {
      this.closedError ??= e;
      const p = this.pending;
      this.pending = undefined;
      p?.reject(e);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed by the server')));
  }

  static open(port: number, host = '127.0.0.1'): Promise<KeepAliveConnection> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host }, () => {
        s.off('error', reject);
        resolve(new KeepAliveConnection(s));
      });
      s.once('error', reject);
    });
  }

  get(path: string): Promise<HttpResponse> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.pending) return Promise.reject(new Error('a request is already in flight'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private tryComplete(): void {
    if (!this.pending) return;
    const headEnd = this.buffer.indexOf('\r\n\r\n');
    if (headEnd < 0) return;
    const head = this.buffer.subarray(0, headEnd).toString('latin1');
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? NaN);
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
    if (!Number.isFinite(status) || !Number.isFinite(length)) {
      const p = this.pending;
      this.pending = undefined;
      p.reject(new Error(`malformed response: ${JSON.stringify(head.slice(0, 80))}`));
      return;
    }
    if (this.buffer.length < headEnd + 4 + length) return;
    const body = this.buffer.subarray(headEnd + 4, headEnd + 4 + length);
    this.buffer = this.buffer.subarray(headEnd + 4 + length);
    const p = this.pending;
    this.pending = undefined;
    p.resolve({ status, body: Buffer.from(body) });
  }
}
