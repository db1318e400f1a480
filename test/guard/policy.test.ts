/** Policy parsing: the documented format, strictness, and hostile input. */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { actionFor, defaultPolicy, isAllowed, makeFinding, matchesProcess, parsePolicy, shouldAct } from '../../src/guard/index.js';

const docExample = {
  protect: [{ exe: '/usr/sbin/nginx' }, { name: 'postgres' }, { buildId: 'ABCDEF0123456789' }, 'redis-server', '/usr/bin/memcached'],
  ignore: [{ name: 'gdb' }],
  actions: { default: 'log', 0: 'restore', 3: 'restore', 5: 'kill', 8: 'stop' },
  actOnSeverity: 'medium',
  trustedKeys: ['/etc/hotpatch/trusted.d/ops.pub'],
  jit: [{ name: 'node' }, { exe: '/usr/lib/jvm/java-17-openjdk-amd64/bin/java' }],
  allowBreakpoints: [{ name: 'myservice' }],
  allow: [{ code: 3, kind: 'ld-preload', module: '/libjemalloc.so.2' }],
};

describe('policy', () => {
  it('parses the documented example', () => {
    const p = parsePolicy(JSON.stringify(docExample), 'example.json');
    expect(p.protect).toEqual([{ exe: '/usr/sbin/nginx' }, { name: 'postgres' }, { buildId: 'abcdef0123456789' }, { name: 'redis-server' }, { exe: '/usr/bin/memcached' }]);
    expect(actionFor(p, 0)).toBe('restore');
    expect(actionFor(p, 5)).toBe('kill');
    expect(actionFor(p, 9)).toBe('log');
    expect(p.jit).toHaveLength(2);
    expect(p.source).toBe('example.json');
  });

  it('has a default that logs and allows recognised JIT runtimes', () => {
    const p = defaultPolicy();
    expect(actionFor(p, 0)).toBe('log');
    expect(p.jit).toBe('recognised');
    expect(p.allowBreakpoints).toBe(false);
  });

  it('matches processes by exe, name (comm or basename) and build-id', () => {
    const id = { exe: '/usr/sbin/nginx', comm: 'nginx: worker', buildId: 'abcd' };
    expect(matchesProcess({ exe: '/usr/sbin/nginx' }, id)).toBe(true);
    expect(matchesProcess({ name: 'nginx' }, id)).toBe(true);
    expect(matchesProcess({ name: 'nginx: worker' }, id)).toBe(true);
    expect(matchesProcess({ name: 'nginx', buildId: 'ffff' }, id)).toBe(false);
  });

  it('allows findings only when every given field matches, and breakpoints per process', () => {
    const p = parsePolicy(JSON.stringify(docExample));
    const f = makeFinding({ pid: 1, code: 3, kind: 'ld-preload', severity: 'info', module: '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', detail: '' });
    const id = { exe: '/usr/bin/x', comm: 'x' };
    expect(isAllowed(p, f, id)).toBe(true);
    expect(isAllowed(p, { ...f, module: '/tmp/libevil.so' }, id)).toBe(false);
    expect(isAllowed(p, { ...f, kind: 'got-hook' }, id)).toBe(false);
    const bp = makeFinding({ pid: 1, code: 0, kind: 'breakpoint', severity: 'info', detail: '' });
    expect(isAllowed(p, bp, { exe: '/opt/myservice', comm: 'myservice' })).toBe(true);
    expect(isAllowed(p, bp, id)).toBe(false);
    expect(shouldAct(p, bp)).toBe(false);
    expect(shouldAct(p, { ...bp, severity: 'high' })).toBe(true);
  });

  const bad: Array<[string, RegExp]> = [
    ['', /not valid JSON/],
    ['[]', /must be a JSON object/],
    ['null', /must be a JSON object/],
    ['{"protekt": []}', /unknown key "protekt"/],
    ['{"protect": {}}', /protect must be an array/],
    ['{"protect": [{}]}', /matches nothing/],
    ['{"protect": [{"exe": 5}]}', /protect\[0\]\.exe must be a non-empty string/],
    ['{"protect": [{"buildId": "xyz"}]}', /buildId must be hex/],
    ['{"protect": [{"exe": "/a", "uid": 0}]}', /unknown key "uid"/],
    ['{"actions": {"11": "log"}}', /not a structure code/],
    ['{"actions": {"0": "nuke"}}', /must be one of log, stop, kill, restore/],
    ['{"actions": 5}', /actions must be/],
    ['{"actOnSeverity": "huge"}', /actOnSeverity must be one of/],
    ['{"jit": "all"}', /jit must be/],
    ['{"trustedKeys": "/k.pub"}', /trustedKeys must be an array/],
    ['{"allow": [{}]}', /would allow every finding/],
    ['{"allow": [{"kind": "everything"}]}', /kind must be one of/],
    ['{"allow": [{"code": "x"}]}', /not a structure code/],
    ['{"allowBreakpoints": "yes"}', /allowBreakpoints must be an array/],
    ['{"__proto__": {"protect": []}}', /unknown key "__proto__"/],
  ];
  it.each(bad)('rejects %j with a message naming the problem', (text, re) => {
    let err: unknown;
    try {
      parsePolicy(text, 'p.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).code).toBe('GUARD_BAD_POLICY');
    expect((err as Error).message).toMatch(re);
    expect((err as Error).message).toContain('p.json');
  });

  it('survives random mutations of a valid policy without throwing anything but UsageError', () => {
    const base = JSON.stringify(docExample);
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    for (let i = 0; i < 2000; i++) {
      const chars = [...base];
      for (let k = 0; k < 3; k++) chars[Math.floor(rnd() * chars.length)] = String.fromCharCode(32 + Math.floor(rnd() * 95));
      try {
        parsePolicy(chars.join(''));
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
      }
    }
  });
});
