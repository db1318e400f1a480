/** Which file names are another build of the target library (the "runs another build" result). */
import { describe, expect, it } from 'vitest';
import { sameLibrary } from '../../src/patch/updater/discover.js';

describe('sameLibrary', () => {
  it('another version of the same library behind the same soname', () => {
    expect(sameLibrary('libz.so.1.2.12', 'libz.so.1.2.13')).toBe(true);
    expect(sameLibrary('libxml2.so.2.9.13', 'libxml2.so.2.9.14')).toBe(true);
    expect(sameLibrary('libfoo.so', 'libfoo.so.2.1')).toBe(true);
  });
  it('another major version, another library, or not a library', () => {
    expect(sameLibrary('libfoo.so.3.0', 'libfoo.so.2.1')).toBe(false);
    expect(sameLibrary('libzstd.so.1.5.4', 'libz.so.1.2.13')).toBe(false);
    expect(sameLibrary('server', 'server')).toBe(false);
  });
});
