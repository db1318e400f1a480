import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessError } from '../../src/errors.js';
import { AT_BASE, AT_SYSINFO_EHDR, parseAuxv, parseMaps, parseSmaps, parseStat, parseStatus, readElfSummaryFromFile } from '../../src/process/index.js';

describe('parseMaps', () => {
  it('parses file, anonymous, pseudo and deleted mappings, and paths with spaces', () => {
    const text = [
      '00400000-00401000 r--p 00000000 fd:01 1234                               /usr/bin/my prog',
      '7f0000000000-7f0000001000 r-xp 00001000 fd:01 99 /tmp/x (deleted)',
      '7f0000002000-7f0000003000 rw-p 00000000 00:00 0 ',
      '7f0000003000-7f0000004000 rw-s 00000000 00:05 77 /memfd:jit (deleted)',
      '7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]',
      'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
      '',
    ].join('\n');
    const m = parseMaps(text, 42);
    expect(m).toHaveLength(6);
    expect(m[0]).toMatchObject({ start: 0x400000n, end: 0x401000n, path: '/usr/bin/my prog', inode: 1234, dev: 'fd:01', deleted: false });
    expect(m[0]!.mapFilesPath).toBe('/proc/42/map_files/400000-401000');
    expect(m[1]).toMatchObject({ path: '/tmp/x', deleted: true, fileOffset: 0x1000n, protection: { read: true, write: false, execute: true, shared: false } });
    expect(m[2]).toMatchObject({ path: '', isFile: false });
    expect(m[2]!.mapFilesPath).toBeUndefined();
    expect(m[3]).toMatchObject({ path: '/memfd:jit', deleted: true, protection: { shared: true } });
    expect(m[4]!.path).toBe('[stack]');
    expect(m[5]!.start).toBe(0xffffffffff600000n);
  });

  it.each([
    'garbage',
    '00400000-00401000 r--p 00000000 fd:01',
    '00400000 r--p 00000000 fd:01 1 /x',
    '00401000-00400000 r--p 00000000 fd:01 1 /x',
    '00400000-00401000 rzzp 00000000 fd:01 1 /x',
    '00400000-00401000 r--p 0000zz00 fd:01 1 /x',
    '1ffffffffffffffff-2ffffffffffffffff r--p 00000000 fd:01 1 /x',
    '00400000-00401000 r--p 00000000 fd:01 99999999999999999999 /x',
  ])('rejects %j with PROCESS_BAD_PROCFS', (line) => {
    expect(() => parseMaps(line)).toThrow(expect.objectContaining({ code: 'PROCESS_BAD_PROCFS' }));
  });
});

describe('parseStatus', () => {
  const good = [
    'Name:\tmy prog',
    'State:\tS (sleeping)',
    'Tgid:\t10',
    'Pid:\t10',
    'PPid:\t1',
    'TracerPid:\t7',
    'Uid:\t1000\t1001\t1002\t1003',
    'Gid:\t5\t6\t7\t8',
    'Groups:\t4 24 27 ',
    'Threads:\t3',
    'SigCgt:\t0000000180004002',
    'CapInh:\t0000000000000000',
    'CapPrm:\t000001ffffffffff',
    'CapEff:\t000001ffffffffff',
    'CapBnd:\t000001ffffffffff',
    'CapAmb:\t0000000000000000',
    'NoNewPrivs:\t1',
    'Seccomp:\t2',
    'Seccomp_filters:\t3',
    '',
  ].join('\n');
  it('parses ids, capabilities and seccomp', () => {
    const s = parseStatus(good);
    expect(s).toMatchObject({ name: 'my prog', state: 'S', tgid: 10, pid: 10, ppid: 1, tracerPid: 7, threads: 3, noNewPrivs: true, seccomp: 2, seccompFilters: 3 });
    expect(s.uid).toEqual({ real: 1000, effective: 1001, saved: 1002, fs: 1003 });
    expect(s.gid.fs).toBe(8);
    expect(s.groups).toEqual([4, 24, 27]);
    expect(s.capEff).toBe(0x1ffffffffffn);
    expect(s.sigCgt).toBe(0x180004002n);
  });
  it.each([
    ['empty', ''],
    ['no colon', 'Name my prog\nState: S\nPid: 1'],
    ['missing Pid', 'Name:\tx\nState:\tS\n'],
    ['bad Uid', good.replace('Uid:\t1000\t1001\t1002\t1003', 'Uid:\t1000')],
    ['bad cap', good.replace('CapEff:\t000001ffffffffff', 'CapEff:\txyz')],
    ['bad Tgid', good.replace('Tgid:\t10', 'Tgid:\tten')],
  ])('rejects %s', (_n, text) => {
    expect(() => parseStatus(text)).toThrow(ProcessError);
  });
});

describe('parseStat', () => {
  it('handles a comm with spaces and parentheses', () => {
    const rest = 'S 1 10 10 0 -1 4194560 ' + Array.from({ length: 12 }, () => '0').join(' ') + ' 123456 0 0';
    const st = parseStat(`10 (a) b (c)) ${rest}`);
    expect(st).toMatchObject({ pid: 10, comm: 'a) b (c)', state: 'S', ppid: 1, flags: 4194560, startTime: 123456n });
  });
  it.each(['', '10', '10 (x', '10 (x) S 1', 'x (y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20'])('rejects %j', (t) => {
    expect(() => parseStat(t)).toThrow(ProcessError);
  });
});

describe('parseAuxv', () => {
  function auxv(pairs: Array<[bigint, bigint]>): Uint8Array {
    const b = Buffer.alloc(pairs.length * 16);
    pairs.forEach(([t, v], i) => {
      b.writeBigUInt64LE(t, i * 16);
      b.writeBigUInt64LE(v, i * 16 + 8);
    });
    return b;
  }
  it('parses entries and stops at AT_NULL', () => {
    const a = parseAuxv(auxv([[BigInt(AT_SYSINFO_EHDR), 0x7fff0000n], [BigInt(AT_BASE), 0x7f00n], [999n, 1n], [0n, 0n], [3n, 5n]]));
    expect(a.sysinfoEhdr).toBe(0x7fff0000n);
    expect(a.base).toBe(0x7f00n);
    expect(a.phdr).toBeUndefined();
    expect(a.entries.map((e) => e.name)).toEqual(['AT_SYSINFO_EHDR', 'AT_BASE', 'AT_999']);
  });
  it('rejects truncated input and absurd types', () => {
    expect(() => parseAuxv(new Uint8Array(15))).toThrow(ProcessError);
    expect(() => parseAuxv(auxv([[0xffffffffffffn, 0n]]))).toThrow(ProcessError);
  });
});

describe('parseSmaps', () => {
  it('parses fields in bytes and VmFlags', () => {
    const s = parseSmaps(
      [
        '00400000-00401000 r-xp 00000000 fd:01 1234 /bin/x',
        'Size:                  4 kB',
        'Private_Dirty:         4 kB',
        'Anonymous:             4 kB',
        'THPeligible:    0',
        'VmFlags: rd ex mr mw me',
        '7f0000002000-7f0000003000 rw-p 00000000 00:00 0',
        'Size:                  4 kB',
      ].join('\n'),
    );
    expect(s).toHaveLength(2);
    expect(s[0]).toMatchObject({ size: 4096, privateDirty: 4096, anonymous: 4096, vmFlags: ['rd', 'ex', 'mr', 'mw', 'me'] });
    expect(s[1]!.vmFlags).toEqual([]);
  });
  it('rejects fields before any header and bad lines', () => {
    expect(() => parseSmaps('Size: 4 kB')).toThrow(ProcessError);
    expect(() => parseSmaps('00400000-00401000 r-xp 00000000 fd:01 1 /x\nnonsense')).toThrow(ProcessError);
  });
});

describe('readElfSummaryFromFile on hostile files', () => {
  it('returns a summary or undefined for truncated and corrupted ELF headers, never throws', () => {
    const good = readFileSync('/usr/bin/true');
    const dir = mkdtempSync(join(tmpdir(), 'hp-elfsum-'));
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    try {
      const real = readElfSummaryFromFile('/usr/bin/true');
      expect(real?.programHeaders.some((p) => p.type === 1)).toBe(true);
      expect(real?.buildId).toMatch(/^[0-9a-f]{40}$/);
      let undef = 0;
      for (let i = 0; i < 300; i++) {
        const b = Buffer.from(good.subarray(0, 8192));
        for (let k = 0; k < 1 + rnd(6); k++) b[rnd(i % 2 ? 64 : 1024)] = rnd(256);
        const f = join(dir, `f${i}`);
        writeFileSync(f, i % 5 === 0 ? b.subarray(0, rnd(200)) : b);
        const s = readElfSummaryFromFile(f);
        if (s === undefined) undef++;
        else expect(Array.isArray(s.programHeaders)).toBe(true);
      }
      expect(undef).toBeGreaterThan(10);
      expect(readElfSummaryFromFile(join(dir, 'missing'))).toBeUndefined();
      expect(readElfSummaryFromFile(dir)).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
