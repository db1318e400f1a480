/**
 * Placement of a patch's new code and data inside the arena: pure arithmetic over the plan, done
 * before the target is touched. Code, read-only data and variables live in separate regions (code
 * ends up r-x, data r--, variables rw-), each laid out from offset 0 with the alignment every part
 * asks for.
 */
import { RefusedError } from '../../errors.js';
import type { PatchPlan } from '../plan.js';

/** Where each part of a patch sits inside its code and data regions (offsets from the region start). */
export interface PatchLayout {
  /** Offset of `plan.functions[i].code` inside the code region. */
  functionOffsets: number[];
  /** Offset of `plan.data[i].bytes` inside the data region, or the variables region when it is writable. */
  dataOffsets: number[];
  /** Bytes the code region needs (unaligned end of the last function). */
  codeSize: number;
  /** Bytes the data region needs (0 when the plan carries no data). */
  dataSize: number;
  /** Largest alignment any code part asks for; the code region start must honour it. */
  codeAlign: number;
  /** Largest alignment any data part asks for. */
  dataAlign: number;
  /** Bytes the variables region needs (0 when the plan adds no variable). */
  varsSize: number;
  varsAlign: number;
}

/** Alignment never below 16 for code: matches what compilers give functions, keeps entries cache-friendly. */
const MIN_CODE_ALIGN = 16;
/** A part asking for more than a page cannot be honoured by a page-granular arena allocator. */
const MAX_ALIGN = 4096;

function checkAlign(align: number, what: string): number {
  if (!Number.isInteger(align) || align < 1 || align > MAX_ALIGN || (align & (align - 1)) !== 0) {
    throw new RefusedError(
      'LINK_BAD_ALIGNMENT',
      `${what} asks for alignment ${align}; only powers of two up to ${MAX_ALIGN} are supported: rebuild the package`,
    );
  }
  return align;
}

/** Rounds `value` up to a multiple of `align` (a power of two). */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/** Rounds a bigint address up to a multiple of `align` (a power of two). */
export function alignUpAddress(value: bigint, align: number): bigint {
  const a = BigInt(align);
  return ((value + a - 1n) / a) * a;
}

/** Lays out the code and data of `plan`; throws RefusedError for impossible alignments or empty code. */
export function layoutPatch(plan: PatchPlan): PatchLayout {
  let codeAlign = MIN_CODE_ALIGN;
  let offset = 0;
  const functionOffsets: number[] = [];
  for (const fn of plan.functions) {
    const align = Math.max(MIN_CODE_ALIGN, checkAlign(fn.align, `new code of ${fn.name}`));
    if (fn.code.length === 0) {
      throw new RefusedError('LINK_EMPTY_CODE', `new code of ${fn.name} is empty: rebuild the package`);
    }
    codeAlign = Math.max(codeAlign, align);
    offset = alignUp(offset, align);
    functionOffsets.push(offset);
    offset += fn.code.length;
  }
  const codeSize = offset;
  const regions = { data: { size: 0, align: 1 }, vars: { size: 0, align: 1 } };
  const dataOffsets: number[] = [];
  for (const d of plan.data) {
    const align = checkAlign(d.align, `data ${d.name}`);
    const r = d.writable === true ? regions.vars : regions.data;
    r.align = Math.max(r.align, align);
    r.size = alignUp(r.size, align);
    dataOffsets.push(r.size);
    r.size += d.bytes.length;
  }
  return {
    functionOffsets, dataOffsets, codeSize, codeAlign,
    dataSize: regions.data.size, dataAlign: regions.data.align, varsSize: regions.vars.size, varsAlign: regions.vars.align,
  };
}
