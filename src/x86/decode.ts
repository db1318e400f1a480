/**
 * Decoding x86-64 code into plain `Insn` objects (no iced type leaves src/x86).
 *
 * Speed matters here: `scan` classifies every function of libc. Every iced getter is a call into
 * WebAssembly, so the loop reads only what it needs, reuses one iced `Instruction` per decode run
 * and skips the formatter unless text is asked for.
 */
import { X86Error } from '../errors.js';
import {
  Code,
  Decoder,
  Instruction,
  OpKind,
  Register,
  intelFormatter,
  mnemonicName,
  registerName,
  type IcedInstruction,
} from './iced.js';

/**
 * Where control goes after an instruction (iced `FlowControl`, named for readers). As in iced,
 * `call` also covers `syscall`/`sysenter` (no `branchTarget` then), `return` covers `iret`/`sysret`,
 * and `exception` covers `ud2` as well as invalid bytes (check `invalid`).
 */
export type FlowKind =
  | 'next'
  | 'branch'
  | 'conditional-branch'
  | 'call'
  | 'indirect-branch'
  | 'indirect-call'
  | 'return'
  | 'interrupt'
  | 'xbegin'
  | 'exception';

const FLOW_KINDS: readonly FlowKind[] = [
  'next', // FlowControl.Next = 0
  'branch', // UnconditionalBranch = 1
  'indirect-branch', // IndirectBranch = 2
  'conditional-branch', // ConditionalBranch = 3
  'return', // Return = 4
  'call', // Call = 5
  'indirect-call', // IndirectCall = 6
  'interrupt', // Interrupt = 7
  'xbegin', // XbeginXabortXend = 8
  'exception', // Exception = 9 (also INVALID, UD0/1/2)
];

/** A constant field inside an instruction's bytes (iced ConstantOffsets). */
export interface InsnField {
  /** Offset of the field from the first byte of the instruction. */
  offset: number;
  /** Size in bytes (1, 2, 4 or 8). */
  size: number;
}

/**
 * Which bytes of the instruction hold constants, so a builder can emit relocations for them and an
 * engine can patch them. For a near direct branch/call the relative displacement is `branch` (iced
 * reports it as the immediate); `immediate` is then absent.
 */
export interface InsnFields {
  displacement?: InsnField;
  immediate?: InsnField;
  /** Second immediate (only `enter imm16, imm8` and a few others). */
  immediate2?: InsnField;
  branch?: InsnField;
}

/** The memory operand of an instruction (x86 has at most one, string instructions aside). */
export interface MemoryRef {
  /** `[rip + disp]`: `target` is the absolute address it designates. */
  ripRelative: boolean;
  target?: bigint;
  /**
   * The displacement as encoded, sign-extended (for RIP-relative operands the raw disp32, not the
   * absolute address).
   */
  displacement: bigint;
  base?: string;
  index?: string;
  scale: number;
  /** Only when the instruction has a segment override prefix: "fs"/"gs" mark TLS accesses. */
  segment?: string;
}

/** One decoded instruction, as plain data. */
export interface Insn {
  address: bigint;
  length: number;
  /** The instruction's bytes: a subarray of the input, not a copy. */
  bytes: Uint8Array;
  /** Intel syntax, e.g. `mov eax, [0x4010]`; empty when decoded with `{ text: false }`. */
  text: string;
  /** Lower-case mnemonic ("jmp", "nop", "endbr64"); "invalid" for undecodable bytes. */
  mnemonic: string;
  flow: FlowKind;
  /**
   * The bytes are not a valid instruction (data, garbage) or the input ends inside it
   * (`truncated`). Invalid instructions have `flow: 'exception'`.
   */
  invalid: boolean;
  truncated: boolean;
  /** Target of a near direct jmp/jcc/call/loop/jrcxz/xbegin. */
  branchTarget?: bigint;
  memory?: MemoryRef;
  /** Immediate operand values as the CPU uses them (sign- or zero-extended to 64 bits as encoded). */
  immediates?: bigint[];
  fields: InsnFields;
  isNop: boolean;
  isInt3: boolean;
  isEndbr64: boolean;
  /**
   * With `{ registers: true }`: the register named by the first operand (the destination of
   * `mov`/`lea`/`add`...), as its 64-bit name ("rdx" for edx/dx/dl), when that operand is a
   * general-purpose register. For data-flow questions such as "which lea last set this register".
   */
  dest?: string;
}

/** Options for decoding. */
export interface DecodeOptions {
  /** Format Intel-syntax text (default true). Turn it off for bulk scans: it is the costly part. */
  text?: boolean;
  /** Stop after this many instructions. */
  maxInstructions?: number;
  /** Fill `Insn.dest` (one more iced call per instruction; default false). */
  registers?: boolean;
}

/** 64-bit name of a general-purpose register name ("edx", "dl", "r8d" -> "rdx", "rdx", "r8"). */
export function fullRegisterName(name: string): string {
  const m = /^r(\d+)[dwb]?$/.exec(name);
  if (m) return `r${m[1]}`;
  const legacy: Record<string, string> = {
    al: 'rax', ah: 'rax', ax: 'rax', eax: 'rax', bl: 'rbx', bh: 'rbx', bx: 'rbx', ebx: 'rbx',
    cl: 'rcx', ch: 'rcx', cx: 'rcx', ecx: 'rcx', dl: 'rdx', dh: 'rdx', dx: 'rdx', edx: 'rdx',
    sil: 'rsi', si: 'rsi', esi: 'rsi', dil: 'rdi', di: 'rdi', edi: 'rdi',
    bpl: 'rbp', bp: 'rbp', ebp: 'rbp', spl: 'rsp', sp: 'rsp', esp: 'rsp',
  };
  return legacy[name] ?? name;
}

function decoderOver(code: Uint8Array, address: bigint) {
  if (!(code instanceof Uint8Array)) throw new TypeError('code: expected Uint8Array');
  if (typeof address !== 'bigint') throw new TypeError('address: expected a bigint');
  if (address < 0n || address > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError('address: expected a 64-bit unsigned bigint');
  }
  const d = new Decoder(64, code, 0);
  d.ip = address;
  return d;
}

/** Reads one decoded iced instruction into plain data. `offset` is its position in `code`. */
function toInsn(
  ins: IcedInstruction,
  decoder: InstanceType<typeof Decoder>,
  code: Uint8Array,
  offset: number,
  length: number,
  address: bigint,
  withText: boolean,
  withRegisters = false,
): Insn {
  const codeValue = ins.code;
  const invalid = codeValue === Code.INVALID;
  const flowIdx = ins.flowControl;
  const fields: InsnFields = {};
  const insn: Insn = {
    address,
    length,
    bytes: code.subarray(offset, offset + length),
    text: '',
    mnemonic: invalid ? 'invalid' : mnemonicName(ins.mnemonic),
    flow: FLOW_KINDS[flowIdx] ?? 'exception',
    invalid,
    truncated: false,
    fields,
    isNop: false,
    isInt3: codeValue === Code.Int3,
    isEndbr64: codeValue === Code.Endbr64,
  };
  if (invalid) {
    insn.text = '(bad)';
    return insn;
  }
  insn.isNop = insn.mnemonic === 'nop';
  if (withText) insn.text = intelFormatter().format(ins);
  if (withRegisters && ins.opCount > 0 && ins.opKind(0) === OpKind.Register) {
    const r = registerName(ins.opRegister(0));
    if (r !== undefined) insn.dest = fullRegisterName(r);
  }

  const opCount = ins.opCount;
  let hasMemory = false;
  let hasBranch = false;
  let immediates: bigint[] | undefined;
  for (let op = 0; op < opCount; op++) {
    const k = ins.opKind(op);
    if (k === OpKind.Memory) hasMemory = true;
    else if (k === OpKind.NearBranch64 || k === OpKind.NearBranch32 || k === OpKind.NearBranch16) hasBranch = true;
    else if (k >= OpKind.Immediate8 && k <= OpKind.Immediate32to64) (immediates ??= []).push(ins.immediate(op));
  }
  if (immediates !== undefined) insn.immediates = immediates;
  if (hasBranch) insn.branchTarget = ins.nearBranchTarget;
  if (hasMemory) {
    const ripRelative = ins.isIpRelMemoryOperand;
    const mem: MemoryRef = {
      ripRelative,
      displacement: 0n,
      scale: 1,
    };
    if (ripRelative) {
      mem.target = ins.ipRelMemoryAddress;
      // iced stores the absolute address as "displacement" for RIP-relative operands.
      mem.displacement = BigInt.asIntN(64, mem.target - (address + BigInt(length)));
    } else {
      mem.displacement = BigInt.asIntN(64, ins.memoryDisplacement);
      const base = registerName(ins.memoryBase);
      if (base !== undefined) mem.base = base;
      const index = registerName(ins.memoryIndex);
      if (index !== undefined) {
        mem.index = index;
        mem.scale = ins.memoryIndexScale;
      }
    }
    const seg = ins.segmentPrefix;
    if (seg !== Register.None) mem.segment = registerName(seg);
    insn.memory = mem;
  }
  if (hasMemory || hasBranch || immediates !== undefined) {
    const co = decoder.getConstantOffsets(ins);
    try {
      if (co.hasDisplacement) fields.displacement = { offset: co.displacementOffset, size: co.displacementSize };
      if (co.hasImmediate) {
        const f = { offset: co.immediateOffset, size: co.immediateSize };
        if (hasBranch) fields.branch = f;
        else fields.immediate = f;
      }
      if (co.hasImmediate2) fields.immediate2 = { offset: co.immediateOffset2, size: co.immediateSize2 };
    } finally {
      co.free();
    }
  }
  return insn;
}

/**
 * Decodes `code` (the bytes at run-time or link-time `address`) instruction by instruction.
 * Undecodable bytes yield an `invalid` Insn and decoding goes on after them, so data in code or a
 * truncated function is visible to the caller rather than silently misread. Break out of the loop
 * early freely: the decoder is freed in `finally`.
 */
export function* iterateInstructions(code: Uint8Array, address: bigint, options: DecodeOptions = {}): Generator<Insn> {
  const withText = options.text ?? true;
  const withRegisters = options.registers ?? false;
  const max = options.maxInstructions ?? Infinity;
  const decoder = decoderOver(code, address);
  const ins = new Instruction();
  try {
    let count = 0;
    while (count < max && decoder.canDecode) {
      const offset = decoder.position;
      decoder.decodeOut(ins);
      let length = decoder.position - offset;
      const invalid = ins.code === Code.INVALID;
      const truncated = invalid && decoder.lastError === 2; // DecoderError.NoMoreBytes
      if (invalid && !truncated) {
        // Resynchronise one byte later: iced may swallow the following bytes into the invalid
        // instruction, and the next valid instruction could start at any of them.
        length = 1;
        decoder.position = offset + 1;
        decoder.ip = address + BigInt(offset + 1);
      }
      if (length <= 0) length = 1;
      const insn = toInsn(ins, decoder, code, offset, length, address + BigInt(offset), withText, withRegisters);
      insn.truncated = truncated;
      count++;
      yield insn;
    }
  } finally {
    ins.free();
    decoder.free();
  }
}

/** Decodes a whole function (or any code range) into an array; see {@link iterateInstructions}. */
export function decodeFunction(code: Uint8Array, address: bigint, options: DecodeOptions = {}): Insn[] {
  const out: Insn[] = [];
  for (const insn of iterateInstructions(code, address, options)) out.push(insn);
  return out;
}

/**
 * Decodes the one instruction at the start of `bytes`. Throws X86Error (code X86_EMPTY) on empty
 * input; invalid or truncated bytes come back as an `invalid` Insn.
 */
export function decodeAt(bytes: Uint8Array, address: bigint, options: DecodeOptions = {}): Insn {
  for (const insn of iterateInstructions(bytes, address, { ...options, maxInstructions: 1 })) return insn;
  throw new X86Error('X86_EMPTY', 'no bytes to decode: pass at least one byte of code');
}

/** Formats an Insn's bytes as Intel syntax (for Insns decoded with `{ text: false }`). */
export function formatInsn(insn: Pick<Insn, 'bytes' | 'address'>): string {
  return decodeAt(insn.bytes, insn.address, { text: true }).text;
}

/** True when every instruction decoded and none is truncated. */
export function allValid(insns: readonly Insn[]): boolean {
  return insns.every((i) => !i.invalid);
}

/** A near direct branch or call and where it goes. */
export interface BranchRef {
  from: bigint;
  target: bigint;
  flow: FlowKind;
  /** Where the rel8/rel32 sits inside the instruction. */
  field?: InsnField;
}

/** Every near direct branch/call (jmp, jcc, call, loop, jrcxz, xbegin) with its target. */
export function findBranchTargets(insns: readonly Insn[]): BranchRef[] {
  const out: BranchRef[] = [];
  for (const i of insns) {
    if (i.branchTarget === undefined) continue;
    const ref: BranchRef = { from: i.address, target: i.branchTarget, flow: i.flow };
    if (i.fields.branch !== undefined) ref.field = i.fields.branch;
    out.push(ref);
  }
  return out;
}

/** A RIP-relative memory reference and the absolute address it designates. */
export interface RipRef {
  from: bigint;
  target: bigint;
  mnemonic: string;
  /** Where the disp32 sits inside the instruction. */
  field?: InsnField;
}

/** Every RIP-relative memory operand (`[rip+disp32]`), resolved to absolute addresses. */
export function findRipReferences(insns: readonly Insn[]): RipRef[] {
  const out: RipRef[] = [];
  for (const i of insns) {
    if (i.memory?.ripRelative !== true || i.memory.target === undefined) continue;
    const ref: RipRef = { from: i.address, target: i.memory.target, mnemonic: i.mnemonic };
    if (i.fields.displacement !== undefined) ref.field = i.fields.displacement;
    out.push(ref);
  }
  return out;
}

/**
 * Direct branches/calls whose target lies in [start, end). The engine uses it with
 * [entry + 1, entry + 5) before writing a 5-byte jump over an unpadded entry.
 */
export function branchesInto(insns: readonly Insn[], start: bigint, end: bigint): BranchRef[] {
  return findBranchTargets(insns).filter((b) => b.target >= start && b.target < end);
}
