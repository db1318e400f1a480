/**
 * The only module of hotpatch that imports iced-x86 (CommonJS + WebAssembly). Everything else in
 * src/x86 goes through here, and nothing outside src/x86 sees an iced type.
 *
 * iced-x86 is a CommonJS package. It is loaded with `require`, not `import`: an ESM import of
 * CommonJS makes Node scan the 900 KB source for export names first (cjs-module-lexer), which
 * costs a one-function `apply` ~60 ms of start-up. Types come from type-only imports, which
 * verbatimModuleSyntax erases.
 */
import { createRequire } from 'node:module';
import type { Formatter as IcedFormatter, Instruction as IcedInstruction } from 'iced-x86';

const iced = createRequire(import.meta.url)('iced-x86') as typeof import('iced-x86');

export type { IcedInstruction };
export const { BlockEncoder, Decoder, Formatter, FormatterSyntax, Instruction, Code, OpKind, Register, Mnemonic } = iced;

let formatter: IcedFormatter | undefined;

/**
 * The shared Intel-syntax formatter. It lives as long as the process (one small wasm object), so
 * it is created once and never freed; per-call objects (decoders, instructions, constant offsets)
 * are freed by their users in `finally`.
 */
export function intelFormatter(): IcedFormatter {
  if (formatter === undefined) {
    const f = new Formatter(FormatterSyntax.Intel);
    f.hexPrefix = '0x';
    f.hexSuffix = '';
    f.uppercaseHex = false;
    f.branchLeadingZeros = false;
    f.leadingZeros = false;
    f.spaceAfterOperandSeparator = true;
    formatter = f;
  }
  return formatter;
}

const mnemonicNames: string[] = [];
/** Lower-case mnemonic name of an iced `Mnemonic` value ("jmp", "endbr64"). */
export function mnemonicName(m: number): string {
  let s = mnemonicNames[m];
  if (s === undefined) {
    s = String((Mnemonic as unknown as Record<number, string>)[m] ?? 'invalid').toLowerCase();
    mnemonicNames[m] = s;
  }
  return s;
}

const registerNames: string[] = [];
/** Lower-case register name of an iced `Register` value, or undefined for `Register.None`. */
export function registerName(r: number): string | undefined {
  if (r === Register.None) return undefined;
  let s = registerNames[r];
  if (s === undefined) {
    s = String((Register as unknown as Record<number, string>)[r] ?? `reg${r}`).toLowerCase();
    registerNames[r] = s;
  }
  return s;
}
