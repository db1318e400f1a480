/**
 * Debian source packages for tests that build real software: fetched through a private apt
 * configuration (a deb-src line for the distribution's archive, under the test's own directory:
 * the machine's apt sources are not touched) and unpacked once. Without apt-get source /
 * dpkg-source or the archive, the caller skips with the reason returned.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function sh(cmd: string, args: string[], cwd?: string): Promise<void> {
  await run(cmd, args, { cwd, maxBuffer: 64 << 20 });
}

/**
 * The unpacked source tree of Debian package `name` in `root`/src (fetched once; `version` is the
 * .dsc's version), or the reason it cannot be had.
 */
export async function fetchDebianSource(name: string, root: string): Promise<{ dir: string; version: string } | { skip: string }> {
  const dir = join(root, 'src');
  const stamp = join(root, 'src.version');
  if (existsSync(join(dir, 'debian/rules'))) return { dir, version: existsSync(stamp) ? readFileSync(stamp, 'utf8') : 'unknown' };
  for (const tool of ['apt-get', 'dpkg-source', 'dpkg-buildflags']) {
    try {
      await sh('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return { skip: `${tool} is not installed (apt-get install dpkg-dev)` };
    }
  }
  const apt = join(root, 'apt');
  rmSync(apt, { recursive: true, force: true });
  for (const d of ['etc', 'lists/partial', 'cache/archives/partial', 'dl']) mkdirSync(join(apt, d), { recursive: true });
  let suite = 'bookworm';
  try {
    suite = readFileSync('/etc/os-release', 'utf8').match(/^VERSION_CODENAME=(\w+)/m)?.[1] ?? suite;
  } catch {
    // keep bookworm
  }
  writeFileSync(
    join(apt, 'etc/src.sources'),
    `Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: ${suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n`,
  );
  const o = ['-o', 'Dir::Etc::SourceList=/dev/null', '-o', `Dir::Etc::SourceParts=${join(apt, 'etc')}`, '-o', `Dir::State::Lists=${join(apt, 'lists')}`, '-o', `Dir::Cache=${join(apt, 'cache')}`, '-o', 'Debug::NoLocking=1', '-o', 'APT::Sandbox::User=root'];
  try {
    await sh('apt-get', [...o, '-qq', 'update']);
    await sh('apt-get', [...o, '-qq', 'source', '--download-only', name], join(apt, 'dl'));
    const dsc = readdirSync(join(apt, 'dl')).find((f) => f.endsWith('.dsc'));
    if (!dsc) return { skip: `apt-get source ${name} fetched no .dsc` };
    rmSync(`${dir}.tmp`, { recursive: true, force: true });
    await sh('dpkg-source', ['--no-check', '-x', dsc, `${dir}.tmp`], join(apt, 'dl'));
    rmSync(dir, { recursive: true, force: true });
    renameSync(`${dir}.tmp`, dir);
    const version = dsc.slice(name.length + 1, -'.dsc'.length);
    writeFileSync(stamp, version);
    return { dir, version };
  } catch (e) {
    return { skip: `cannot fetch the Debian source package ${name} (deb-src of the distribution's archive): ${(e as Error).message.split('\n')[0]}` };
  }
}
