/** The in-process record codec: round trips, slot selection after torn writes, hostile input. */
import { describe, expect, it } from 'vitest';
import {
  decodeRecordBody,
  emptyRecord,
  encodeRecordBody,
  encodeRecordSlot,
  pickNewestSlot,
  readRecordSlot,
  RECORD_HEADER_SIZE,
  RECORD_SLOT_SIZE,
  RecordError,
  type PatchRecord,
} from '../../src/patch/engine/index.js';

function sample(): PatchRecord {
  const r = emptyRecord(1234);
  r.transaction = { op: 'apply', patchId: 'p1', ownerPid: 99, startedAt: 1 };
  r.arenas.push({ start: 0x7f0000000000n, end: 0x7f0000010000n, kind: 'code', prot: 'r-x', near: '/bin/x' });
  r.arenas.push({ start: 0x7f0000010000n, end: 0x7f0000014000n, kind: 'vars', prot: 'rw-', near: '/bin/x' });
  r.patches.push({
    id: 'p1', packageHash: 'ab'.repeat(32), signer: null,
    module: { path: '/bin/x', name: 'x', buildId: 'cd'.repeat(20), loadBias: 0x555555554000n },
    state: 'pending', appliedAt: 2,
    code: { start: 0x7f0000000000n, end: 0x7f0000000010n }, data: null, vars: { start: 0x7f0000010000n, end: 0x7f0000010008n },
    sites: [{ function: 'f', file: 'a.c', kind: 'padded', address: 0x555555555000n, switchAddress: 0x555555555005n,
      original: Uint8Array.of(0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90), written: Uint8Array.of(0xe9, 1, 2, 3, 4, 0xeb, 0xf9),
      newCode: { start: 0x7f0000000000n, end: 0x7f0000000004n }, codeSha256: '00'.repeat(32), state: 'pending' }],
    relocations: [{ part: 'function', index: 0, offset: 2, type: 'pc32', symbolAddress: 0x555555558000n, addend: -4n }],
    signing: { algorithm: 'ed25519', keyId: '0123456789abcdef', publicKey: new Uint8Array(32).fill(7), signature: new Uint8Array(64).fill(9), message: Uint8Array.of(1, 2, 3) },
    content: Uint8Array.of(5, 6, 7),
  });
  return r;
}

function slotReader(bytes: Uint8Array) {
  return (off: number, len: number) => bytes.subarray(off, off + len);
}

describe('record codec', () => {
  it('round-trips every field (bigints, negative addends, bytes)', () => {
    const r = sample();
    const back = decodeRecordBody(encodeRecordBody(r), 7n);
    expect(back).toEqual({ ...r, generation: 7n });
  });

  it('a slot is valid only with magic, version, length and checksum intact', () => {
    const slot = encodeRecordSlot(sample(), 3n);
    const ok = readRecordSlot(slotReader(slot));
    expect(ok.valid && ok.generation).toBe(3n);
    for (const [at, what] of [[0, 'magic'], [12, 'header size'], [40, 'checksum'], [RECORD_HEADER_SIZE + 5, 'body']] as const) {
      const bad = slot.slice();
      bad[at]! ^= 0xff;
      expect(readRecordSlot(slotReader(bad)).valid, what).toBe(false);
    }
    // A torn body (writer killed mid-write) fails the checksum.
    const torn = slot.slice();
    torn.fill(0, RECORD_HEADER_SIZE + 10);
    expect(readRecordSlot(slotReader(torn)).valid).toBe(false);
    // A length beyond the slot is rejected before reading.
    const huge = slot.slice();
    new DataView(huge.buffer).setUint32(24, RECORD_SLOT_SIZE, true);
    expect(readRecordSlot(slotReader(huge))).toMatchObject({ valid: false, reason: 'bad body length' });
  });

  it('picks the newest valid slot, or none', () => {
    const a = readRecordSlot(slotReader(encodeRecordSlot(sample(), 4n)));
    const b = readRecordSlot(slotReader(encodeRecordSlot(sample(), 5n)));
    const dead = readRecordSlot(slotReader(new Uint8Array(RECORD_HEADER_SIZE)));
    expect(pickNewestSlot([a, b])?.index).toBe(1);
    expect(pickNewestSlot([b, a])?.index).toBe(0);
    expect(pickNewestSlot([dead, a])?.generation).toBe(4n);
    expect(pickNewestSlot([dead, dead])).toBeNull();
  });

  it('refuses hostile bodies with RECORD_CORRUPT', () => {
    const good = JSON.parse(new TextDecoder().decode(encodeRecordBody(sample()))) as Record<string, unknown>;
    const mutate = (f: (o: any) => void): Uint8Array => {
      const o = structuredClone(good) as any;
      f(o);
      return new TextEncoder().encode(JSON.stringify(o));
    };
    const cases: Array<[string, Uint8Array]> = [
      ['not json', new TextEncoder().encode('{')],
      ['not utf-8', Uint8Array.of(0xff, 0xfe)],
      ['array', new TextEncoder().encode('[]')],
      ['wrong format', mutate((o) => (o.format = 'x'))],
      ['address not hex', mutate((o) => (o.arenas[0].start = '12'))],
      ['address too long', mutate((o) => (o.arenas[0].start = '0x' + 'f'.repeat(17)))],
      ['range reversed', mutate((o) => (o.patches[0].code = { start: '0x10', end: '0x1' }))],
      ['bad state', mutate((o) => (o.patches[0].state = 'weird'))],
      ['odd hex bytes', mutate((o) => (o.patches[0].sites[0].original = 'abc'))],
      ['lengths differ', mutate((o) => (o.patches[0].sites[0].written = '90'))],
      ['sites not a list', mutate((o) => (o.patches[0].sites = {}))],
      ['pid not integer', mutate((o) => (o.pid = 1.5))],
      ['bad relocation type', mutate((o) => (o.patches[0].relocations[0].type = 'pc64'))],
      ['null patch', mutate((o) => (o.patches[0] = null))],
      ['unknown arena kind', mutate((o) => (o.arenas[1].kind = 'heap'))],
      ['writable and executable arena', mutate((o) => (o.arenas[1].prot = 'rwx'))],
      ['variables range reversed', mutate((o) => (o.patches[0].vars = { start: '0x10', end: '0x1' }))],
    ];
    for (const [what, body] of cases) {
      let err: unknown;
      try {
        decodeRecordBody(body, 1n);
      } catch (e) {
        err = e;
      }
      expect(err, what).toBeInstanceOf(RecordError);
      expect((err as RecordError).code, what).toBe('RECORD_CORRUPT');
    }
    expect(() => decodeRecordBody(mutate((o) => (o.version = 2)), 1n)).toThrow(expect.objectContaining({ code: 'RECORD_VERSION' }));
  });

  it('refuses a record that does not fit its slot', () => {
    const r = sample();
    r.patches[0]!.content = new Uint8Array(RECORD_SLOT_SIZE);
    expect(() => encodeRecordSlot(r, 1n)).toThrow(expect.objectContaining({ code: 'RECORD_FULL' }));
  });
});
