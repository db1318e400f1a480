/**
 * Installing hotpatch like a tool (issue #13 item 3): `npm pack` makes a tarball that holds the
 * docs, deploy files and samples the guides refer to and bundles its runtime dependencies, so
 * `npm install -g --offline` from it works without a registry; deploy/debian/build-deb.sh turns
 * the same tarball into a .deb whose contents and control fields are checked with dpkg-deb (and
 * lintian, when installed), and whose unit passes `systemd-analyze verify`.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
let dir = '';
let tarball = '';

function has(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-pkg-'));
  // --ignore-scripts: `prepare` would rebuild dist/ while other test files run the CLI from it
  // (`npm test` has built it already).
  const { stdout } = await run('npm', ['pack', '--silent', '--ignore-scripts', '--pack-destination', dir], { cwd: REPO_ROOT, maxBuffer: 64 << 20 });
  tarball = join(dir, stdout.trim().split('\n').pop()!);
}, 300_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('npm pack and npm install -g from the tarball', () => {
  it('the tarball holds the CLI, the docs, deploy/, samples/ and the bundled dependencies', async () => {
    expect(tarball).toMatch(new RegExp(`hotpatch-${VERSION.replace(/\./g, '\\.')}\\.tgz$`));
    const { stdout } = await run('tar', ['-tzf', tarball], { maxBuffer: 64 << 20 });
    const files = new Set(stdout.split('\n'));
    for (const f of [
      'package/dist/src/cli/main.js', 'package/README.md', 'package/docs/user-guide.md', 'package/docs/guard.md', 'package/docs/limitations.md',
      'package/deploy/hotpatch-guard.service', 'package/deploy/guard.example.json', 'package/deploy/prometheus/alerts.yml',
      'package/deploy/grafana/hotpatch-guard.json', 'package/deploy/debian/build-deb.sh', 'package/samples/demo/server.c',
      'package/node_modules/commander/package.json', 'package/node_modules/iced-x86/package.json', 'package/node_modules/koffi/package.json',
    ]) expect(files.has(f), f).toBe(true);
    expect([...files].filter((f) => f.startsWith('package/test/') || f.startsWith('package/src/'))).toEqual([]);
  });

  it('installs offline into a prefix and runs: --version, a command that loads the decoder, completion', async () => {
    const prefix = join(dir, 'prefix');
    await run('npm', ['install', '-g', '--prefix', prefix, '--offline', '--no-audit', '--no-fund', tarball], { maxBuffer: 64 << 20 });
    const bin = join(prefix, 'bin/hotpatch');
    expect((await run(bin, ['--version'])).stdout.trim()).toBe(VERSION);
    const scan = JSON.parse((await run(bin, ['scan', '/bin/true', '--json'], { maxBuffer: 64 << 20 })).stdout) as { modules: Array<{ total: number }> };
    expect(scan.modules.length).toBeGreaterThan(0);
    expect((await run(bin, ['completion', 'bash'])).stdout).toContain('complete -F _hotpatch hotpatch');
    for (const f of ['docs/guard.md', 'deploy/hotpatch-guard.service', 'samples/demo/server.c']) expect(existsSync(join(prefix, 'lib/node_modules/hotpatch', f)), f).toBe(true);
  }, 300_000);
});

describe('the Debian package', () => {
  let deb = '';
  let root = '';
  beforeAll(async () => {
    const out = join(dir, 'deb');
    execFileSync('mkdir', ['-p', out]);
    const { stdout } = await run(join(REPO_ROOT, 'deploy/debian/build-deb.sh'), ['--tarball', tarball, '-o', out], { maxBuffer: 64 << 20 });
    deb = stdout.trim().split('\n').pop()!;
    root = join(dir, 'root');
    await run('dpkg-deb', ['-x', deb, root]);
  }, 300_000);

  it('has the documented control fields and conffiles', async () => {
    expect(deb).toMatch(new RegExp(`hotpatch_${VERSION.replace(/\./g, '\\.')}-1_amd64\\.deb$`));
    const info = (await run('dpkg-deb', ['-I', deb])).stdout;
    expect(info).toMatch(/^ Package: hotpatch$/m);
    expect(info).toMatch(new RegExp(`^ Version: ${VERSION.replace(/\./g, '\\.')}-1$`, 'm'));
    expect(info).toMatch(/^ Architecture: amd64$/m);
    expect(info).toMatch(/^ Depends: nodejs \(>= 20\)$/m);
    expect((await run('dpkg-deb', ['-f', deb, 'Installed-Size'])).stdout.trim()).toMatch(/^\d+$/);
    const conffiles = (await run('sh', ['-c', `dpkg-deb --ctrl-tarfile '${deb}' | tar -xOf - ./conffiles`])).stdout;
    expect(conffiles.trim().split('\n').sort()).toEqual(['/etc/hotpatch/guard.json', '/etc/logrotate.d/hotpatch-guard']);
  });

  it('installs the CLI, the unit, the policy the unit reads, the man page, completion, logrotate, docs', async () => {
    const listing = (await run('dpkg-deb', ['-c', deb], { maxBuffer: 64 << 20 })).stdout;
    const entries = listing.split('\n').filter((l) => l !== '');
    const path = (p: string) => entries.find((l) => l.endsWith(` .${p}`) || l.includes(` .${p} -> `));
    for (const p of [
      '/usr/bin/hotpatch', '/usr/lib/hotpatch/dist/src/cli/main.js', '/usr/lib/hotpatch/package.json', '/lib/systemd/system/hotpatch-guard.service',
      '/etc/hotpatch/guard.json', '/etc/hotpatch/trusted.d/', '/etc/logrotate.d/hotpatch-guard', '/usr/share/man/man1/hotpatch.1.gz',
      '/usr/share/bash-completion/completions/hotpatch', '/usr/share/doc/hotpatch/copyright', '/usr/share/doc/hotpatch/guard.md',
      '/usr/share/doc/hotpatch/examples/guard.json', '/usr/share/doc/hotpatch/examples/prometheus-alerts.yml', '/usr/share/doc/hotpatch/examples/grafana-hotpatch-guard.json',
    ]) expect(path(p), p).toBeDefined();
    // Owned by root, executable where it must be, nothing writable by others.
    expect(entries.every((l) => / root\/root /.test(l)), 'every file owned by root').toBe(true);
    expect(path('/usr/bin/hotpatch')).toMatch(/^-rwxr-xr-x /);
    expect(entries.filter((l) => /^.{5}w|^.{8}w/.test(l) && !l.startsWith('l'))).toEqual([]);
    // koffi: only the linux_x64 build is kept.
    expect(readdirSync(join(root, 'usr/lib/hotpatch/node_modules/koffi/build/koffi'))).toEqual(['linux_x64']);
  });

  it('the installed CLI runs, the man page renders, the completion and the policy are the current ones', async () => {
    const main = join(root, 'usr/lib/hotpatch/dist/src/cli/main.js');
    expect(readFileSync(join(root, 'usr/bin/hotpatch'), 'utf8')).toContain('exec /usr/bin/node /usr/lib/hotpatch/dist/src/cli/main.js "$@"');
    expect((await run('node', [main, '--version'])).stdout.trim()).toBe(VERSION);
    expect(readFileSync(join(root, 'usr/share/bash-completion/completions/hotpatch'), 'utf8')).toBe((await run('node', [main, 'completion', 'bash'])).stdout);
    const man = (await run('sh', ['-c', `zcat '${join(root, 'usr/share/man/man1/hotpatch.1.gz')}' | groff -man -Tutf8 -ww -z 2>&1; zcat '${join(root, 'usr/share/man/man1/hotpatch.1.gz')}' | groff -man -Tascii | col -b`])).stdout;
    expect(man).toContain('hotpatch guard');
    expect(man).toContain('--json-log');
    expect(man).not.toMatch(/warning/);
    // The policy the unit reads parses (strict: an unknown key would be an error).
    const verify = await run('node', [main, 'verify', '--pid', String(process.pid), '--policy', join(root, 'etc/hotpatch/guard.json'), '--structures', '8', '--json']).catch((e: { code: number; stdout: string; stderr: string }) => e);
    expect((verify as { stderr?: string }).stderr ?? '').not.toMatch(/GUARD_BAD_POLICY/);
    const unit = readFileSync(join(root, 'lib/systemd/system/hotpatch-guard.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/hotpatch guard .*--policy \/etc\/hotpatch\/guard\.json/m);
    expect(statSync(join(root, 'etc/hotpatch/guard.json')).isFile()).toBe(true);
  });

  it.skipIf(!has('systemd-analyze'))('the unit passes `systemd-analyze verify` (ExecStart= pointed at the extracted package)', async () => {
    // `--root` would need a whole system (sysinit.target, /bin/kill) inside the root, and the package
    // is not installed on this shared machine: verify a copy whose ExecStart= names the extracted wrapper.
    const shipped = readFileSync(join(root, 'lib/systemd/system/hotpatch-guard.service'), 'utf8');
    const vdir = join(dir, 'verify');
    mkdirSync(vdir);
    const unit = join(vdir, 'hotpatch-guard.service');
    writeFileSync(unit, shipped.replace(/^ExecStart=\/usr\/bin\/hotpatch /m, `ExecStart=${root}/usr/bin/hotpatch `));
    expect(readFileSync(unit, 'utf8')).not.toBe(shipped);
    const r = await run('systemd-analyze', ['verify', unit]).then(
      (x) => ({ code: 0, out: x.stdout + x.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
    );
    expect(r.out.split('\n').filter((l) => l.includes('hotpatch-guard.service')), r.out).toEqual([]);
    expect(r.code, r.out).toBe(0);
  });

  it.skipIf(!has('lintian'))('lintian finds no errors', async () => {
    const r = await run('lintian', ['--no-tag-display-limit', deb]).then((x) => x.stdout, (e: { stdout: string }) => e.stdout);
    expect(r.split('\n').filter((l) => l.startsWith('E:'))).toEqual([]);
  });
});
