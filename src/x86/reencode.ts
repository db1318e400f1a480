/**
 * Moving code: re-encode decoded instructions at a new address (iced BlockEncoder), and masking the
 * address-dependent fields of an instruction so two builds can be compared byte by byte.
 */
import { X86Error } from '../errors.js';
import { decodeFunction, type Insn } from './decode.js';
import { BlockEncoder, Code, Decoder, type IcedInstruction } from './iced.js';

/** Code re-encoded at a new address. */
export interface Reencoded {
  address: bigint;
  bytes: Uint8Array;
  /** The re-encoded code decoded again (lengths can grow: a `jcc short` that no longer reaches becomes near). */
  insns: Insn[];
}

/**
 * Re-encodes `insns` (decoded at their original addresses) so they run at `newAddress`: direct
 * branches and calls keep their absolute targets (targets inside the block follow their
 * instruction), RIP-relative operands keep the absolute address they designate. Throws X86Error
 * `X86_UNDECODABLE` for an invalid instruction and `X86_ENCODE` when something cannot be encoded
 * at the new address (e.g. a RIP-relative operand more than ±2 GiB away). Note: for a target
 * below 4 GiB that rip+disp32 cannot reach, iced picks the `67h` EIP-relative form, which designates
 * the same address.
 */
export function reencodeAt(insns: readonly Insn[], newAddress: bigint): Reencoded {
  const bad = insns.find((i) => i.invalid);
  if (bad !== undefined) {
    throw new X86Error('X86_UNDECODABLE', `cannot move code: the bytes at 0x${bad.address.toString(16)} are not a valid instruction`);
  }
  const encoder = new BlockEncoder(64, 0);
  try {
    for (const insn of insns) {
      const decoder = new Decoder(64, insn.bytes, 0);
      let ins: IcedInstruction | undefined;
      try {
        decoder.ip = insn.address;
        ins = decoder.decode();
        if (ins.code === Code.INVALID) {
          throw new X86Error('X86_UNDECODABLE', `cannot move code: the bytes at 0x${insn.address.toString(16)} are not a valid instruction`);
        }
        encoder.add(ins);
      } finally {
        ins?.free();
        decoder.free();
      }
    }
    let bytes: Uint8Array;
    try {
      bytes = encoder.encode(newAddress);
    } catch (e) {
      throw new X86Error(
        'X86_ENCODE',
        `cannot re-encode ${insns.length} instruction(s) at 0x${newAddress.toString(16)}: ${String(e)}; place the code nearer to what it references`,
        { cause: e },
      );
    }
    return { address: newAddress, bytes, insns: decodeFunction(bytes, newAddress) };
  } finally {
    encoder.free();
  }
}

/** Which constant fields {@link maskedBytes} zeroes. */
export interface MaskOptions {
  /** rel8/rel32 of direct branches and calls (default true). */
  branch?: boolean;
  /** disp32 of RIP-relative operands (default true). */
  ripDisplacement?: boolean;
  /** Every displacement, not only RIP-relative ones (default false). */
  displacement?: boolean;
  /** Immediates (default false): absolute addresses in non-PIE code hide here. */
  immediate?: boolean;
}

/**
 * A copy of the instruction's bytes with its address-dependent fields zeroed, so instructions of
 * two builds that differ only by where things moved compare equal; compare the targets
 * (`branchTarget`, `memory.target`) separately, mapped to symbols.
 */
export function maskedBytes(insn: Insn, options: MaskOptions = {}): Uint8Array {
  const out = insn.bytes.slice();
  const zero = (f: { offset: number; size: number } | undefined) => {
    if (f !== undefined) out.fill(0, f.offset, f.offset + f.size);
  };
  if (options.branch ?? true) zero(insn.fields.branch);
  if ((options.displacement ?? false) || ((options.ripDisplacement ?? true) && insn.memory?.ripRelative === true)) {
    zero(insn.fields.displacement);
  }
  if (options.immediate ?? false) {
    zero(insn.fields.immediate);
    zero(insn.fields.immediate2);
  }
  return out;
}
