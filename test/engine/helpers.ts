/**
 * Helpers for engine tests: build PatchPlans by hand from a fixture's ELF file (the builder is
 * another area), talk to the fixture target, and snapshot its memory for byte-identity checks.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseElf } from '../../src/elf/index.js';
import type { PatchFunction, PatchPlan, Relocation } from '../../src/patch/plan.js';
import { openProcess } from '../../src/process/index.js';
import { freeze } from '../../src/patch/engine/control.js';
import type { Target } from '../helpers/native.js';

export interface HandFunction {
  name: string;
  kind: 'padded' | 'plain';
  code: number[] | Uint8Array;
  relocations?: Relocation[];
  /** Override the expected site bytes (to provoke a mismatch). */
  expected?: Uint8Array;
}

/** Builds a plan for `exe` whose functions are replaced by hand-assembled code. */
export function handPlan(exe: string, fns: HandFunction[], buildId?: string): PatchPlan {
  const bytes = new Uint8Array(readFileSync(exe));
  const elf = parseElf(bytes);
  const functions: PatchFunction[] = fns.map((f) => {
    const sym = elf.getSymbol(f.name);
    const vaddr = sym.value;
    const siteVaddr = f.kind === 'padded' ? vaddr - 5n : vaddr;
    const len = f.kind === 'padded' ? 7 : 5;
    return {
      name: f.name,
      vaddr,
      size: Number(sym.size),
      oldHash: createHash('sha256').update(elf.readVaddr(vaddr, Number(sym.size))).digest('hex'),
      entry: { kind: f.kind, siteVaddr, switchVaddr: vaddr, expected: f.expected ?? elf.readVaddr(siteVaddr, len).slice() },
      code: Uint8Array.from(f.code),
      align: 16,
      relocations: f.relocations ?? [],
    };
  });
  return { target: { buildId: buildId ?? elf.buildId!, name: basename(exe), size: bytes.length }, functions, data: [] };
}

/** Link-time address of a symbol of `exe`. */
export function symbolVaddr(exe: string, name: string): bigint {
  return parseElf(new Uint8Array(readFileSync(exe))).getSymbol(name).value;
}

// Hand-assembled replacements (x86-64, System V ABI: argument in edi, result in eax).
/** lea eax, [rdi+2]; ret — the fixed padded_value. */
export const PADDED_FIX = [0x8d, 0x47, 0x02, 0xc3];
/** lea eax, [rdi+rdi*1+0x10]... simpler: mov eax, 42; ret. */
export const RETURN_42 = [0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3];
/** mov eax, 43; ret. */
export const RETURN_43 = [0xb8, 0x2b, 0x00, 0x00, 0x00, 0xc3];
/** mov eax, [rip+multiplier] ; imul eax, edi ; ret — pc32 at offset 2 (module reloc, addend -4). */
export const MUL_GLOBAL = [0x8b, 0x05, 0, 0, 0, 0, 0x0f, 0xaf, 0xc7, 0xc3];
/** sub rsp,8 ; call helper ; add eax,1000 ; add rsp,8 ; ret — pc32 at offset 5 (symbol reloc). */
export const CALL_HELPER = [0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0x05, 0xe8, 0x03, 0x00, 0x00, 0x48, 0x83, 0xc4, 0x08, 0xc3];

export interface Values {
  padded: number;
  plain: number;
  other: number;
  calls: number;
}

/** Asks the fixture target for its current function values. */
export async function query(t: Target): Promise<Values> {
  const before = t.output().length;
  t.child.stdin!.write('v\n');
  const re = /padded=(-?\d+) plain=(-?\d+) other=(-?\d+) calls=(\d+)\n/;
  await t.waitFor({ test: (s: string) => re.test(s.slice(before)) } as unknown as RegExp, 5000);
  const m = re.exec(t.output().slice(before))!;
  return { padded: Number(m[1]), plain: Number(m[2]), other: Number(m[3]), calls: Number(m[4]) };
}

/** Every mapping line and the bytes of every executable file mapping: equal snapshots = byte-identical target. */
export function snapshot(pid: number): { maps: string[]; text: string } {
  const p = openProcess(pid);
  try {
    const maps = p.enumerateMappings();
    const h = createHash('sha256');
    for (const m of maps) if (m.protection.execute && m.isFile) h.update(p.readMemory(m.start, Number(m.end - m.start)));
    return { maps: maps.map((m) => `${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.path}`), text: h.digest('hex') };
  } finally {
    p.close();
  }
}

/**
 * nanosleep(2 s) then return 42: keeps the calling threads inside the new code long enough that
 * they are still there when a remove on a loaded machine checks (a live remove checks after the switch).
 */
export const SLEEP_2S_42 = [
  0x48, 0x83, 0xec, 0x18, // sub rsp, 24
  0x48, 0xc7, 0x04, 0x24, 0x02, 0x00, 0x00, 0x00, // mov qword [rsp], 2
  0x48, 0xc7, 0x44, 0x24, 0x08, 0x00, 0x00, 0x00, 0x00, // mov qword [rsp+8], 0
  0x48, 0x89, 0xe7, // mov rdi, rsp
  0x31, 0xf6, // xor esi, esi
  0xb8, 0x23, 0x00, 0x00, 0x00, // mov eax, 35 (nanosleep)
  0x0f, 0x05, // syscall
  0x48, 0x83, 0xc4, 0x18, // add rsp, 24
  0xb8, 0x2a, 0x00, 0x00, 0x00, // mov eax, 42
  0xc3, // ret
];
/** mov eax, [rip+data] ; ret — pc32 at offset 2 to the patch's own data (local reloc, addend -4). */
export const LOAD_DATA = [0x8b, 0x05, 0, 0, 0, 0, 0xc3];

/** Waits (bounded) until some thread of `pid` executes inside `range` (a loaded machine may take long). */
export async function untilInside(pid: number, range: { start: bigint; end: bigint }): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const f = freeze(pid);
    const inside = f.threadsUsing([range]).length > 0;
    f.thaw();
    if (inside) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no thread entered the new code within 20 s');
}
