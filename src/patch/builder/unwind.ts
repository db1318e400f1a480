/**
 * The unwind information of the new code: a `.eh_frame` image holding the CIEs and FDEs of every
 * placed unit of new code (changed functions, their cold parts, carried helpers), and the LSDAs
 * (`.gcc_except_table`: call sites, landing pads, catch types) those FDEs name.
 *
 * Records are copied byte for byte from the new build; only pointer fields change, each becoming a
 * relocation of the data item it is in, so the linker places them like any other carried data:
 * - FDE pc_begin → the unit in the arena (pc_range, call-site and landing-pad offsets are relative
 *   to the function start, so they hold unchanged);
 * - FDE LSDA pointer → the carried LSDA;
 * - CIE personality and LSDA type-table entries → bound like any data pointer of the new build
 *   (src/patch/builder/emit.ts): gcc's indirect encodings point at `DW.ref.*` slots, which bind to
 *   the running build's own slots, so the target's `__gxx_personality_v0` and `typeinfo` objects
 *   are used and `catch` clauses match the exceptions the running code throws.
 * Branch islands appended after a unit have no FDE: they are single `jmp`s that never throw.
 */
import { encodedSize, parseEhFrame, parseLsda, DW_EH_PE_pcrel, type CieRecord, type EncodedPointer, type FdeRecord } from '../../elf/index.js';
import { ElfError } from '../../errors.js';
import type { PatchUnwind, Relocation, RelocationTarget, RelocationType } from '../plan.js';
import { displayKey } from './image.js';
import type { Emitter, PlacedUnit } from './emit.js';

/** What carrying the unwind information produced. */
export interface UnwindResult {
  unwind?: PatchUnwind;
  /** Placed functions left without unwind information, with the reason (for a build warning). */
  missing: { name: string; reason: string }[];
  fdes: number;
}

/** The relocation that stores a pointer field in its own encoding. */
function relocationType(p: EncodedPointer): RelocationType {
  const size = encodedSize(p.encoding);
  const pcrel = (p.encoding & 0x70) === DW_EH_PE_pcrel;
  if (size === 4) return pcrel ? 'pc32' : (p.encoding & 0x08) !== 0 ? 'abs32s' : 'abs32';
  if (size === 8 && !pcrel) return 'abs64';
  throw new ElfError('EH_FRAME_UNSUPPORTED', `pointer encoding 0x${p.encoding.toString(16)} cannot be relocated`);
}

/** Why carrying one FDE failed; the function is then reported without unwind information. */
class SkipFde extends Error {}

/** Runtimes that unwind through code: exceptions (libstdc++) or an explicit unwinder (libgcc_s). */
const UNWINDING_RUNTIMES = /^(?:libstdc\+\+|libgcc_s)\./;

/** Whether the new build links a runtime that unwinds through code (else nothing is carried). */
function needsUnwind(neu: Emitter['neu']): boolean {
  return (neu.elf.dynamic?.needed ?? []).some((n) => UNWINDING_RUNTIMES.test(n));
}

/**
 * Carries the unwind information of every unit the emitter placed (call after `finish`), for
 * builds linked with libstdc++ or libgcc_s only: a C program's `.eh_frame` (gcc emits one by
 * default) would only cost bytes, nothing in it throws.
 */
export function carryUnwind(emitter: Emitter): UnwindResult {
  const neu = emitter.neu;
  const missing: UnwindResult['missing'] = [];
  const units = [...emitter.placedUnits()];
  const ehSec = neu.elf.findSection('.eh_frame');
  if (!needsUnwind(neu) || units.length === 0) return { missing, fdes: 0 };
  if (!ehSec) return { missing: units.map((u) => ({ name: displayKey(u.nf.fn.key), reason: 'the new build has no .eh_frame' })), fdes: 0 };
  const ehBytes = neu.elf.sectionData(ehSec);
  let parsed: ReturnType<typeof parseEhFrame>;
  try {
    parsed = parseEhFrame(ehBytes, ehSec.addr);
  } catch (e) {
    if (!(e instanceof ElfError)) throw e;
    for (const u of units) missing.push({ name: displayKey(u.nf.fn.key), reason: e.message });
    return { missing, fdes: 0 };
  }
  const exSec = neu.elf.findSection('.gcc_except_table');
  const exBytes = exSec ? neu.elf.sectionData(exSec) : new Uint8Array(0);

  const out: Uint8Array[] = [];
  const relocations: Relocation[] = [];
  let size = 0;
  const cieAt = new Map<CieRecord, number>();
  const bind = (addr: bigint): RelocationTarget => {
    const t = emitter.bindDataPointer(addr);
    if (t === undefined) throw new SkipFde(`the pointer to 0x${addr.toString(16)} cannot be bound to the running build`);
    return t;
  };
  const pointer = (record: Uint8Array, recordOffset: number, at: number, p: EncodedPointer, target: RelocationTarget): Relocation => {
    record.fill(0, p.offset - recordOffset, p.offset - recordOffset + p.size);
    return { offset: at + p.offset - recordOffset, type: relocationType(p), target, addend: 0n };
  };
  const lsdaData = (p: EncodedPointer): RelocationTarget => {
    if (!exSec || p.value < exSec.addr || p.value >= exSec.addr + exSec.size) throw new SkipFde('its LSDA is outside .gcc_except_table');
    const info = parseLsda(exBytes, exSec.addr, Number(p.value - exSec.addr));
    if (info.lpStart) throw new SkipFde('its LSDA sets LPStart');
    const bytes = exBytes.slice(info.offset, info.offset + info.size);
    const relocs = info.types.filter((t) => t.value !== 0n).map((t) => pointer(bytes, info.offset, 0, t, bind(t.value)));
    const index = emitter.addData(`lsda:${p.value}`, { name: `LSDA at .gcc_except_table+0x${info.offset.toString(16)}`, bytes, align: 4, relocations: relocs });
    return { kind: 'local', part: 'data', index, offset: 0 };
  };
  const cie = (c: CieRecord): number => {
    const have = cieAt.get(c);
    if (have !== undefined) return have;
    const bytes = ehBytes.slice(c.offset, c.offset + c.size);
    const relocs = c.personality && c.personality.value !== 0n ? [pointer(bytes, c.offset, size, c.personality, bind(c.personality.value))] : [];
    const at = size;
    out.push(bytes);
    relocations.push(...relocs);
    size += bytes.length;
    cieAt.set(c, at);
    return at;
  };
  const fde = (f: FdeRecord, u: PlacedUnit): void => {
    const fn = u.nf.fn;
    if (f.pcBegin.value + f.pcRange > fn.vaddr + BigInt(u.nf.bytes.length)) throw new SkipFde('its FDE extends past the function');
    const bytes = ehBytes.slice(f.offset, f.offset + f.size);
    const code: RelocationTarget = { kind: 'local', part: 'function', index: u.host, offset: u.offset + Number(f.pcBegin.value - fn.vaddr) };
    // Everything that can fail first, so a skipped FDE leaves no CIE, LSDA or relocation behind.
    const lsda = f.lsda ? lsdaData(f.lsda) : undefined;
    relocationType(f.pcBegin);
    const cieOffset = cie(f.cie);
    const at = size;
    new DataView(bytes.buffer).setUint32(4, at + 4 - cieOffset, true); // CIE pointer: back from this field
    relocations.push(pointer(bytes, f.offset, at, f.pcBegin, code));
    if (f.lsda && lsda) relocations.push(pointer(bytes, f.offset, at, f.lsda, lsda));
    out.push(bytes);
    size += bytes.length;
  };

  let fdes = 0;
  for (const u of units) {
    const fn = u.nf.fn;
    const mine = parsed.fdes.filter((f) => f.pcBegin.value >= fn.vaddr && f.pcBegin.value < fn.vaddr + BigInt(u.nf.bytes.length));
    if (mine.length === 0) {
      missing.push({ name: displayKey(fn.key), reason: 'the new build has no FDE for it' });
      continue;
    }
    for (const f of mine) {
      try {
        fde(f, u);
        fdes++;
      } catch (e) {
        if (!(e instanceof SkipFde) && !(e instanceof ElfError)) throw e;
        missing.push({ name: displayKey(fn.key), reason: e.message });
      }
    }
  }
  if (fdes === 0) return { missing, fdes };
  out.push(new Uint8Array(4)); // terminator (a zero length)
  const image = new Uint8Array(size + 4);
  let o = 0;
  for (const b of out) {
    image.set(b, o);
    o += b.length;
  }
  const ehFrame = emitter.addData('unwind:.eh_frame', { name: '.eh_frame of the new code', bytes: image, align: 8, relocations });
  return { unwind: { ehFrame }, missing, fdes };
}
