/**
 * Read and write a process's memory through /proc/PID/mem (pread/pwrite).
 *
 * Writes go through the kernel's FOLL_FORCE path, so they work on read-only text pages (a private
 * file mapping gets a copy-on-write page; the file on disk is never changed) without any mprotect
 * in the target. As root no ptrace attach is needed to open the file, but writes to code are only
 * safe while every thread is frozen (see freezeProcess).
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { ProcessError } from '../../errors.js';
import { MemoryReadError, processErrorFromErrno } from '../inspect/errors.js';
import { MemoryMismatchError, PROCESS_EXITED, PROCESS_MEMORY_UNWRITABLE } from './errors.js';

/** Highest address + 1 that pread/pwrite positions can express exactly (2^53). */
const MAX_POSITION = 2n ** 53n;

function toPosition(address: bigint, length: number): number {
  if (address < 0n || address + BigInt(length) > MAX_POSITION) {
    throw new RangeError(`address 0x${address.toString(16)} (+${length}) is outside user space`);
  }
  return Number(address);
}

function checkLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < 0 || length > 1 << 30) throw new RangeError(`bad memory length: ${length}`);
}

/** An open /proc/PID/mem, readable and (optionally) writable. */
export class ProcessMemory {
  readonly pid: number;
  readonly writable: boolean;
  #fd: number | undefined;

  /** Opens /proc/PID/mem; throws PROCESS_NOT_FOUND / PROCESS_PERMISSION_DENIED. */
  constructor(pid: number, options: { writable?: boolean } = {}) {
    this.pid = pid;
    this.writable = options.writable ?? true;
    try {
      this.#fd = openSync(`/proc/${pid}/mem`, this.writable ? 'r+' : 'r');
    } catch (e) {
      throw processErrorFromErrno(e, pid, 'opening /proc/PID/mem');
    }
  }

  #fdOrThrow(): number {
    if (this.#fd === undefined) throw new RangeError(`memory of process ${this.pid} is closed`);
    return this.#fd;
  }

  /** Whether the mm behind the file is gone (the process exited): /proc/PID/mem then reads 0 bytes. */
  #gone(e?: unknown): ProcessError | undefined {
    const code = (e as { code?: string } | undefined)?.code;
    if (code === 'ESRCH') return new ProcessError(PROCESS_EXITED, `process ${this.pid} exited`, { cause: e });
    return undefined;
  }

  /**
   * Reads up to `length` bytes at `address` into `buf` at `offset`; stops at the first unreadable
   * byte and returns how many bytes were read (never throws for unmapped memory).
   */
  readInto(address: bigint, buf: Uint8Array, offset = 0, length = buf.length - offset): number {
    checkLength(length);
    const fd = this.#fdOrThrow();
    let pos = toPosition(address, length);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = readSync(fd, buf, offset + done, length - done, pos);
      } catch (e) {
        const gone = this.#gone(e);
        if (gone) throw gone;
        break;
      }
      if (n <= 0) break;
      done += n;
      pos += n;
    }
    return done;
  }

  /** Reads exactly `length` bytes; throws MemoryReadError naming the first unreadable address. */
  read(address: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    const n = this.readInto(address, out, 0, length);
    if (n !== length) throw new MemoryReadError(this.pid, address + BigInt(n), length - n);
    return out;
  }

  /**
   * Writes `bytes` at `address` (works on read-only text). Throws PROCESS_MEMORY_UNWRITABLE when
   * the range is not mapped; a partial write can only happen at a mapping boundary and is reported
   * with the first byte not written.
   */
  write(address: bigint, bytes: Uint8Array): void {
    if (!this.writable) throw new RangeError(`memory of process ${this.pid} was opened read-only`);
    checkLength(bytes.length);
    const fd = this.#fdOrThrow();
    let pos = toPosition(address, bytes.length);
    let done = 0;
    while (done < bytes.length) {
      let n: number;
      try {
        n = writeSync(fd, bytes, done, bytes.length - done, pos);
      } catch (e) {
        const gone = this.#gone(e);
        if (gone) throw gone;
        throw new ProcessError(
          PROCESS_MEMORY_UNWRITABLE,
          `cannot write ${bytes.length - done} byte(s) to process ${this.pid} at 0x${(address + BigInt(done)).toString(16)}: ` +
            'the address is not mapped',
          { cause: e },
        );
      }
      if (n <= 0) {
        throw new ProcessError(
          PROCESS_MEMORY_UNWRITABLE,
          `cannot write to process ${this.pid} at 0x${(address + BigInt(done)).toString(16)}: the process has no memory any more (exited?)`,
        );
      }
      done += n;
      pos += n;
    }
  }

  /**
   * Reads `expected.length` bytes at `address`, compares them with `expected` and only then writes
   * `bytes` (same address). On mismatch nothing is written: throws MemoryMismatchError.
   */
  writeChecked(address: bigint, expected: Uint8Array, bytes: Uint8Array): void {
    const actual = this.read(address, expected.length);
    for (let i = 0; i < expected.length; i++) {
      if (actual[i] !== expected[i]) throw new MemoryMismatchError(this.pid, address, expected, actual);
    }
    this.write(address, bytes);
  }

  close(): void {
    if (this.#fd !== undefined) {
      closeSync(this.#fd);
      this.#fd = undefined;
    }
  }
}

/** Opens /proc/PID/mem for reading and writing (writes to code need a frozen process). */
export function openProcessMemory(pid: number, options: { writable?: boolean } = {}): ProcessMemory {
  return new ProcessMemory(pid, options);
}
