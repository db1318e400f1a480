/**
 * Writes into a running target that no thread can be executing (fresh arena space): through
 * /proc/PID/mem, read back and compared, so a short or failed write never goes unnoticed.
 */
import { HotpatchError } from '../../errors.js';
import { openProcessMemory } from '../../process/index.js';
import { bytesEqual, hexBytes } from './sites.js';

export interface MemoryWriter {
  writeVerified(address: bigint, bytes: Uint8Array): void;
  read(address: bigint, length: number): Uint8Array;
  close(): void;
}

export function memoryWriter(pid: number): MemoryWriter {
  const mem = openProcessMemory(pid, { writable: true });
  return {
    writeVerified(address, bytes) {
      mem.write(address, bytes);
      const back = mem.read(address, bytes.length);
      if (!bytesEqual(back, bytes)) {
        throw new HotpatchError(
          'WRITE_NOT_VERIFIED',
          `process ${pid}: bytes written at 0x${address.toString(16)} read back differently (${hexBytes(back.subarray(0, 16))}...)`,
        );
      }
    },
    read: (address, length) => mem.read(address, length),
    close: () => mem.close(),
  };
}
