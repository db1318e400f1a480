/**
 * What a hook at a function entry is and where it leads: the guard shows this in findings when the
 * first bytes of a protected function differ from the file.
 */
import { iterateInstructions, type Insn } from './decode.js';

/**
 * Recognised hook shapes:
 * - `jmp`: `jmp rel32`/`jmp rel8`;
 * - `call`: `call rel32`;
 * - `jmp-indirect`: `jmp [rip+x]`, the destination is the qword at `pointerSlot` (read from
 *   `bytes` when it lies inside them, as in the 14-byte `jmp [rip+0]; dq target`);
 * - `push-ret`: `push imm32; ret`;
 * - `mov-jmp`: `mov reg, imm; jmp reg` (e.g. `movabs rax, imm64; jmp rax`, `movabs r11, ...`);
 * - `int3`: a breakpoint;
 * - `unknown`: anything else (the instruction text is still reported).
 */
export type HookKind = 'jmp' | 'call' | 'jmp-indirect' | 'push-ret' | 'mov-jmp' | 'int3' | 'unknown';

export interface HookInfo {
  kind: HookKind;
  /** Intel-syntax text of the instructions that make up the hook. */
  texts: string[];
  /** Number of bytes the hook occupies. */
  length: number;
  /** The destination, when it is known from the bytes alone. */
  destination?: bigint;
  /** For `jmp-indirect`: address of the pointer slot that holds the destination. */
  pointerSlot?: bigint;
}

function readU64(bytes: Uint8Array, offset: number): bigint | undefined {
  if (offset < 0 || offset + 8 > bytes.length) return undefined;
  return new DataView(bytes.buffer, bytes.byteOffset + offset, 8).getBigUint64(0, true);
}

const REG64_OF_32: Record<string, string> = {
  eax: 'rax', ebx: 'rbx', ecx: 'rcx', edx: 'rdx', esi: 'rsi', edi: 'rdi', ebp: 'rbp', esp: 'rsp',
  r8d: 'r8', r9d: 'r9', r10d: 'r10', r11d: 'r11', r12d: 'r12', r13d: 'r13', r14d: 'r14', r15d: 'r15',
};

/** Destination register of `mov reg, imm` (as its 64-bit name), from the Intel text. */
function movImmRegister(insn: Insn): string | undefined {
  if (insn.mnemonic !== 'mov' || insn.memory !== undefined || insn.immediates?.length !== 1) return undefined;
  const reg = /^mov\s+([a-z0-9]+),/.exec(insn.text)?.[1];
  if (reg === undefined) return undefined;
  if (/^r([a-d]x|[sd]i|[sb]p|\d+)$/.test(reg)) return reg;
  return REG64_OF_32[reg];
}

/**
 * Decodes the first instructions of `bytes` (at `address`) and says what kind of hook they form and
 * where it leads. Never throws on garbage: unrecognised or invalid bytes give `kind: 'unknown'`.
 */
export function describeHook(bytes: Uint8Array, address: bigint): HookInfo {
  const insns: Insn[] = [];
  for (const insn of iterateInstructions(bytes, address, { text: true, maxInstructions: 2 })) insns.push(insn);
  const [a, b] = insns;
  if (a === undefined) return { kind: 'unknown', texts: [], length: 0 };
  const one = (kind: HookKind, extra: Partial<HookInfo> = {}): HookInfo => ({ kind, texts: [a.text], length: a.length, ...extra });
  if (a.invalid) return one('unknown');
  if (a.isInt3) return one('int3');
  if (a.mnemonic === 'jmp' && a.branchTarget !== undefined) return one('jmp', { destination: a.branchTarget });
  if (a.mnemonic === 'call' && a.branchTarget !== undefined) return one('call', { destination: a.branchTarget });
  if (a.flow === 'indirect-branch' && a.memory?.ripRelative === true && a.memory.target !== undefined) {
    const slot = a.memory.target;
    const info = one('jmp-indirect', { pointerSlot: slot });
    const inside = slot - address;
    if (inside >= 0n && inside <= BigInt(bytes.length - 8)) {
      const dest = readU64(bytes, Number(inside));
      if (dest !== undefined) {
        info.destination = dest;
        info.length = Math.max(a.length, Number(inside) + 8);
      }
    }
    return info;
  }
  if (b !== undefined && !b.invalid) {
    const two = (kind: HookKind, destination: bigint): HookInfo => ({
      kind,
      texts: [a.text, b.text],
      length: a.length + b.length,
      destination,
    });
    // push imm32 sign-extends to 64 bits in long mode (iced reports the extended value).
    if (a.mnemonic === 'push' && a.immediates?.length === 1 && b.flow === 'return' && b.immediates === undefined) {
      return two('push-ret', BigInt.asUintN(64, a.immediates[0]!));
    }
    const reg = movImmRegister(a);
    if (reg !== undefined && b.mnemonic === 'jmp' && b.flow === 'indirect-branch' && b.memory === undefined) {
      const target = /^jmp\s+([a-z0-9]+)$/.exec(b.text)?.[1];
      if (target === reg) return two('mov-jmp', BigInt.asUintN(64, a.immediates![0]!));
    }
  }
  return one('unknown');
}
