/**
 * Test oracle for function bytes: nm/readelf (binutils) tell where a function is, so the x86 tests
 * do not depend on the ELF reader being written concurrently in src/elf.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface SectionInfo {
  name: string;
  addr: bigint;
  offset: number;
  size: number;
}

/** Sections from `readelf -SW`. */
export function sections(path: string): SectionInfo[] {
  const out = execFileSync('readelf', ['-SW', path], { encoding: 'utf8' });
  const res: SectionInfo[] = [];
  for (const line of out.split('\n')) {
    const m = /\]\s+(\S+)\s+\S+\s+([0-9a-f]{16})\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(line);
    if (m) res.push({ name: m[1]!, addr: BigInt(`0x${m[2]}`), offset: parseInt(m[3]!, 16), size: parseInt(m[4]!, 16) });
  }
  return res;
}

export interface FunctionSym {
  name: string;
  address: bigint;
  size: number;
}

/** Defined function symbols with their sizes (`nm -S`, or `nm -D -S` for a stripped library). */
export function functionSymbols(path: string, dynamic = false): FunctionSym[] {
  const out = execFileSync('nm', [...(dynamic ? ['-D'] : []), '-S', '--defined-only', path], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const res: FunctionSym[] = [];
  const seen = new Set<bigint>();
  for (const line of out.split('\n')) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) [TtWwi] (\S+)$/.exec(line);
    if (!m) continue;
    const address = BigInt(`0x${m[1]}`);
    if (seen.has(address)) continue;
    seen.add(address);
    res.push({ name: m[3]!.replace(/@.*$/, ''), address, size: parseInt(m[2]!, 16) });
  }
  return res.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}

export interface FunctionBytes {
  name: string;
  address: bigint;
  code: Uint8Array;
  /** Up to 16 bytes before the entry, within the same section. */
  before: Uint8Array;
}

/** Function bytes read from the file at the offsets readelf gives. */
export class Image {
  readonly file: Uint8Array;
  readonly secs: SectionInfo[];
  constructor(readonly path: string) {
    this.file = new Uint8Array(readFileSync(path));
    this.secs = sections(path);
  }
  section(name: string): SectionInfo {
    const s = this.secs.find((x) => x.name === name);
    if (!s) throw new Error(`no ${name} in ${this.path}`);
    return s;
  }
  /** Bytes at link-time `addr` inside one section with file contents, else undefined. */
  read(addr: bigint, length: number): Uint8Array | undefined {
    const sec = this.secs.find((s) => addr >= s.addr && addr + BigInt(length) <= s.addr + BigInt(s.size) && s.addr !== 0n);
    if (!sec) return undefined;
    const off = sec.offset + Number(addr - sec.addr);
    return this.file.subarray(off, off + length);
  }
  bytesOf(sym: FunctionSym): FunctionBytes {
    const sec = this.secs.find((s) => sym.address >= s.addr && sym.address < s.addr + BigInt(s.size));
    if (!sec) throw new Error(`${sym.name} is in no section`);
    const off = sec.offset + Number(sym.address - sec.addr);
    const beforeStart = Math.max(sec.offset, off - 16);
    return {
      name: sym.name,
      address: sym.address,
      code: this.file.subarray(off, off + sym.size),
      before: this.file.subarray(beforeStart, off),
    };
  }
}

/** Instruction boundaries of a range as objdump sees them (addresses). */
export function objdumpBoundaries(path: string, start: bigint, end: bigint): bigint[] {
  const out = execFileSync(
    'objdump',
    ['-d', '-M', 'intel', '--insn-width=16', `--start-address=0x${start.toString(16)}`, `--stop-address=0x${end.toString(16)}`, path],
    { encoding: 'utf8', maxBuffer: 256 << 20 },
  );
  const res: bigint[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s+([0-9a-f]+):\t[0-9a-f]{2} /.exec(line);
    if (m) res.push(BigInt(`0x${m[1]}`));
  }
  return res;
}
