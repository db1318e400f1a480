/**
 * End to end: build old/new pairs of real C/C++ programs, start the OLD build, build the plan, wrap it
 * in a package (encode → decode, so the package format carries everything), apply it through the
 * engine, and check that the running process now answers like the new build — while keeping its
 * state (globals, statics, thread-locals bound to the running copy).
 */
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildPatch } from '../../src/patch/builder/index.js';
import { applyPatch, removePatch } from '../../src/patch/engine/index.js';
import { createPackage, decodePackage, encodePackage } from '../../src/patch/package/index.js';
import { ask, killTargetsAfterAll, startTarget } from '../helpers/native.js';
import { buildPair, RECOMMENDED, type PairOptions } from './pairs.js';

killTargetsAfterAll();

interface Case {
  scenario: string;
  options?: PairOptions;
  input: string;
  before: RegExp;
  after: RegExp;
  functions: string[];
}

const CASES: Case[] = [
  // printf evaluates compute() after reading counter/calls: the line shows the state before the call.
  // counter/calls go on from the running process's values: the new code uses the running copy.
  { scenario: 'basic', input: '5', before: /answer 16 counter 100 calls 0\n/, after: /answer 17 counter 101 calls 1\n/, functions: ['compute'] },
  { scenario: 'static_same_name', input: '5', before: /a 2010 b 4010\n/, after: /a 2010 b 6010\n/, functions: ['helper'] },
  { scenario: 'inlined', input: '5', before: /a 36 b 41 u 0\n/, after: /a 46 b 53 u 0\n/, functions: ['quote_a', 'quote_b'] },
  // The thread-local sum keeps its value across the patch: 5 (old) then + 10*5 (new).
  { scenario: 'tls', input: '5', before: /sum 5 hits 6\n/, after: /sum 55 hits 7\n/, functions: ['record'] },
  { scenario: 'plt_libc', input: 'abc', before: /len 3 buf abc\n/, after: /len 9 buf abcabc\n/, functions: ['shout'] },
  { scenario: 'strings', input: '-3', before: /value -3 is negative\n/, after: /value -3 is below zero \(fixed\)\n/, functions: ['label'] },
  { scenario: 'switch', input: '5', before: /ops 6 10 2 25 2 -5 5 20 0 0\n/, after: /ops 6 10 -25 25 2 -5 5 20 805 905\n/, functions: ['dispatch'] },
  { scenario: 'const_tables', input: '7', before: /prime 19 name three twice 14\n/, after: /prime 23 name THREE \(fixed\) twice 14\n/, functions: ['name_of', 'nth_prime'] },
  { scenario: 'mutual', input: '5', before: /odd 5 even 6 untouched 55\n/, after: /odd 210 even 110 untouched 55\n/, functions: ['even_steps', 'odd_steps'] },
  // TLS (general-dynamic + initial-exec) and the library global keep counting across the patch.
  { scenario: 'shared_lib', options: { shared: true }, input: '5', before: /hello 45 tls 1 ie 1 total 5\n/, after: /HELLO 90 tls 2 ie 2 total 10 len \d+\n/, functions: ['lib_greet'] },
  { scenario: 'cxx', options: { cxx: true }, input: 'abc', before: /hi abc area 9\n/, after: /HELLO abc area\*2 18\n/, functions: ['_ZNK7Greeter5greetERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERK5Shape'] },
  // The build-flag matrix, end to end.
  { scenario: 'basic', options: { flags: ['-O2', '-no-pie', '-fno-pie', '-fpatchable-function-entry=7,5', '-Wl,--emit-relocs'] }, input: '5', before: /answer 16 /, after: /answer 17 /, functions: ['compute'] },
  { scenario: 'strings', options: { flags: ['-O2', '-no-pie', '-fno-pie'] }, input: '2000', before: /value 2000 is positive\n/, after: /value 2000 is huge \(new literal\)\n/, functions: ['label'] },
  { scenario: 'switch', options: { flags: ['-O2', '-no-pie', '-fno-pie'] }, input: '5', before: /ops 6 10 2 25 /, after: /ops 6 10 -25 25 2 -5 5 20 805 905\n/, functions: ['dispatch'] },
  { scenario: 'switch', options: { flags: ['-O0'] }, input: '5', before: /ops 6 10 2 25 /, after: /ops 6 10 -25 25 2 -5 5 20 805 905\n/, functions: ['dispatch'] },
  { scenario: 'strings', options: { flags: ['-O0', '-no-pie', '-fno-pie'] }, input: '-3', before: /is negative\n/, after: /below zero \(fixed\)\n/, functions: ['label'] },
  { scenario: 'data_pointers', options: { flags: ['-O2', '-no-pie', '-fno-pie'] }, input: '-5', before: /hello negative 7 -4\n/, after: /hello a new, longer literal that shifts \.rodata: negative 7 -4\n/, functions: ['describe'] },
  { scenario: 'plt_libc', options: { flags: ['-O2', '-fno-plt', '-fpatchable-function-entry=7,5'] }, input: 'abc', before: /len 3 buf abc\n/, after: /len 9 buf abcabc\n/, functions: ['shout'] },
  { scenario: 'shared_lib', options: { shared: true, flags: ['-O2', '-Wl,-z,now', '-fpatchable-function-entry=7,5'] }, input: '5', before: /hello 45 tls 1 /, after: /HELLO 90 tls 2 ie 2 total 10 /, functions: ['lib_greet'] },
  { scenario: 'basic', options: { flags: ['-Os'] }, input: '5', before: /answer 16 /, after: /answer 17 /, functions: ['compute'] },
  { scenario: 'mutual', options: { flags: ['-O3', '-fcf-protection', '-fpatchable-function-entry=7,5'] }, input: '5', before: /odd 5 even 6 /, after: /odd 210 even 110 /, functions: ['even_steps', 'odd_steps'] },
];

describe('builder end to end: the package applies to the running old build', () => {
  for (const c of CASES) {
    const label = `${c.scenario} [${(c.options?.flags ?? RECOMMENDED).join(' ')}${c.options?.shared ? ' shared' : ''}${c.options?.cxx ? ' g++' : ''}]`;
    it(label, async () => {
      const pair = await buildPair(c.scenario, c.options ?? {});
      const result = buildPatch(new Uint8Array(readFileSync(pair.old)), new Uint8Array(readFileSync(pair.new)), { oldName: pair.old });
      expect(result.plan.functions.map((f) => f.name).sort()).toEqual(c.functions);
      // Through the package format, as `hotpatch build` writes it and `apply` reads it.
      const pkg = decodePackage(encodePackage(createPackage(result.plan)));
      const exe = pair.main ?? pair.old;
      const t = await startTarget(exe, [], { env: { ...process.env, LD_LIBRARY_PATH: dirname(pair.old) } });
      try {
        await ask(t, c.input, c.before);
        const applied = await applyPatch(t.pid, pkg.plan, { patchId: pkg.id });
        expect(applied.status).toBe('patched');
        await ask(t, c.input, c.after);
        if (c.scenario === 'basic' && !c.options) {
          // Removing the patch brings the old behaviour back; the data kept counting.
          const removed = await removePatch(t.pid, pkg.id);
          expect(removed.status).toBe('removed');
          await ask(t, c.input, /answer 16 counter 102 calls 2\n/);
        }
      } finally {
        await t.kill();
      }
    });
  }
});
