/**
 * Reads process memory through /proc/PID/mem with pread. As root this needs no ptrace attach and
 * can read any mapped page, even PROT_NONE-free read-only text. One file descriptor is kept per
 * open process; large reads are split into chunks so a partial failure names the exact address.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { MemoryReadError, processErrorFromErrno } from './errors.js';

/** Largest single pread issued; bigger reads are chunked (keeps one failure localised). */
const CHUNK = 1 << 20;
/** Refuse absurd lengths early: no single mapping on x86-64 user space is read in one go beyond this. */
export const MAX_READ = 1 << 30;

/** Address range check shared by readers: x86-64 canonical addresses are < 2^64. */
function checkRange(address: bigint, length: number): void {
  if (address < 0n || address > 0xffff_ffff_ffff_ffffn) throw new RangeError(`address out of range: ${address}`);
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_READ) throw new RangeError(`bad read length: ${length}`);
  if (address + BigInt(length) > 0x1_0000_0000_0000_0000n) throw new RangeError('read wraps past the end of the address space');
}

/** An open /proc/PID/mem file. */
export class MemoryFile {
  readonly pid: number;
  #fd: number | undefined;
  /** Called when a read fails, to turn "the process has gone" into a ProcessError. */
  readonly #onFailure: () => void;

  constructor(pid: number, onFailure: () => void = () => {}) {
    this.pid = pid;
    this.#onFailure = onFailure;
    try {
      this.#fd = openSync(`/proc/${pid}/mem`, 'r');
    } catch (e) {
      throw processErrorFromErrno(e, pid, 'opening /proc/PID/mem');
    }
  }

  /** Reads `length` bytes at `address`; throws MemoryReadError naming the first unreadable byte. */
  read(address: bigint, length: number): Uint8Array {
    checkRange(address, length);
    const fd = this.#fd;
    if (fd === undefined) throw new RangeError('memory file is closed');
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const want = Math.min(CHUNK, length - done);
      const at = address + BigInt(done);
      let n: number;
      try {
        n = readSync(fd, out, done, want, at);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EIO' || code === 'EFAULT') {
          this.#onFailure();
          throw new MemoryReadError(this.pid, at, length - done, { cause: e });
        }
        this.#onFailure();
        throw processErrorFromErrno(e, this.pid, 'reading memory');
      }
      if (n === 0) {
        // 0 bytes: the mm is gone (process exited) or the address is past the user range.
        this.#onFailure();
        throw new MemoryReadError(this.pid, at, length - done);
      }
      done += n;
    }
    return out;
  }

  /** Like read() but returns the readable prefix instead of throwing at the first bad page. */
  readPartial(address: bigint, length: number): Uint8Array {
    checkRange(address, length);
    const fd = this.#fd;
    if (fd === undefined) throw new RangeError('memory file is closed');
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      let n = 0;
      try {
        n = readSync(fd, out, done, Math.min(CHUNK, length - done), address + BigInt(done));
      } catch {
        break;
      }
      if (n === 0) break;
      done += n;
    }
    return out.subarray(0, done);
  }

  close(): void {
    if (this.#fd !== undefined) {
      closeSync(this.#fd);
      this.#fd = undefined;
    }
  }
}

/**
 * Reads up to `length` bytes of a file at `offset` (pread until done or end of file); returns the
 * bytes read (shorter at end of file).
 */
export function readFileRange(fd: number, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}
