/**
 * End to end: the Ansible role and playbooks in deploy/ansible against 4 "hosts" made on this
 * machine. Each host is a network namespace (a veth pair to the controller, 10.x addresses), a PID
 * namespace (its agent sees only its own processes) and a mount namespace with private tmpfs on
 * /var/lib/hotpatch, /etc/hotpatch, /run/hotpatch and /opt/hotpatch; in it run sshd (bound to the
 * host's address, test-made host key, an authorized key for root) and the target service (a TCP
 * server over the salted updater library). Debian's ansible-playbook, over SSH:
 *   1. rollout.yml with a good patch: installs hotpatch from the `npm pack` tarball, starts the
 *      agent, adds the package; stages 1, 1, 2 hosts; a client loading every service sees 0 failed
 *      requests and every host ends patched;
 *   2. rollout.yml with a patch whose health check fails: withdrawn on the canary, the play stops,
 *      the other 3 hosts never get it;
 *   3. rollback.yml: the good patch comes off everywhere, still 0 failed requests.
 * Teardown (also on failure): the hosts' PID namespaces die with their init (every sshd, agent,
 * service in them), the network namespaces and the controller-side veths are deleted.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listPatches } from '../../src/patch/engine/index.js';
import { buildPatch } from '../../src/patch/builder/index.js';
import { createPackage, encodePackage } from '../../src/patch/package/index.js';
import { signPackage, writeKeyFiles } from '../../src/patch/trust/index.js';
import { LIB_FLAGS } from '../agent/helpers.js';
import { FIXTURES, REPO_ROOT } from '../helpers/native.js';

const run = promisify(execFile);
const HOSTS = 4;
const PORT = 18080;
const tag = `${process.pid % 100000}`;
const subnet = `10.${200 + (process.pid % 50)}`;
const PRIVATE_DIRS = ['/var/lib/hotpatch', '/etc/hotpatch', '/run/hotpatch', '/opt/hotpatch'];

interface Host {
  name: string;
  ns: string;
  veth: string;
  addr: string;
  init?: ChildProcess;
  /** Root-namespace PID of its target service. */
  svcPid?: number;
}

const hosts: Host[] = Array.from({ length: HOSTS }, (_, i) => ({
  name: `host${i + 1}`, ns: `hpfleet-${tag}-${i + 1}`, veth: `hpf${tag}h${i + 1}`.slice(0, 15), addr: `${subnet}.${i + 1}.2`,
}));
let dir = '';
const createdDirs: string[] = [];
let good = { path: '', id: '' };
let bad = { path: '', id: '' };
let pub = '';
let svc = '';

async function sh(cmd: string, args: string[], timeout = 120_000): Promise<string> {
  return (await run(cmd, args, { timeout, maxBuffer: 64 << 20 })).stdout;
}

/** Compiles the salted library (running, good fix, bad fix) and the service; signs both packages. */
async function buildFixture(): Promise<void> {
  const src = join(dir, 'libfix.c');
  const salt = randomBytes(8).toString('hex');
  writeFileSync(src, `${readFileSync(join(FIXTURES, 'updater/libfix.c'), 'utf8')}\n__attribute__((used)) static const char fleet_test_salt[] = "${salt}";\n`);
  writeFileSync(join(dir, 'libbad.c'), readFileSync(src, 'utf8').replace('return x + 2;', 'return x + 1000;'));
  for (const d of ['app', 'good', 'bad']) mkdirSync(join(dir, d));
  const lib = join(dir, 'app/libfix.so');
  svc = join(dir, 'app/svc');
  await Promise.all([
    run('gcc', [...LIB_FLAGS, '-o', lib, src]),
    run('gcc', [...LIB_FLAGS, '-DLIBFIX_FIXED', '-o', join(dir, 'good/libfix.so'), src]),
    run('gcc', [...LIB_FLAGS, '-DLIBFIX_FIXED', '-o', join(dir, 'bad/libfix.so'), join(dir, 'libbad.c')]),
  ]);
  await run('gcc', ['-O2', '-o', svc, join(REPO_ROOT, 'test/fleet/fixtures/svc.c'), `-L${join(dir, 'app')}`, '-lfix', '-lpthread', `-Wl,-rpath,${join(dir, 'app')}`]);
  const { publicKeyFile } = writeKeyFiles(join(dir, 'release.key'), { comment: 'Release team' });
  pub = publicKeyFile;
  const key = readFileSync(join(dir, 'release.key'), 'utf8');
  const make = (which: string, description: string) => {
    const { plan } = buildPatch(new Uint8Array(readFileSync(lib)), new Uint8Array(readFileSync(join(dir, which, 'libfix.so'))), { oldName: 'libfix.so', newName: 'libfix.so' });
    const p = createPackage(plan, { description, cves: ['CVE-2024-0001'], severity: 'high' });
    const path = join(dir, `${which}.hpk`);
    writeFileSync(path, encodePackage(signPackage(p, key)));
    return { path, id: p.id };
  };
  good = make('good', 'lib_value returns x + 2');
  bad = make('bad', 'lib_value returns x + 1000 (fails the health check)');
}

/** `npm pack` of hotpatch (already built: dist/; it bundles its dependencies), as the role expects. */
async function packTarball(): Promise<string> {
  const out = join(dir, 'tarballs');
  mkdirSync(out);
  const json = JSON.parse(await sh('npm', ['pack', REPO_ROOT, '--ignore-scripts', '--json', '--pack-destination', out])) as Array<{ filename: string }>;
  return join(out, json[0]!.filename);
}

/** The host: namespaces, veth, then its init (sshd in the private mounts) and the service. */
async function startHost(h: Host, i: number): Promise<void> {
  await sh('ip', ['netns', 'add', h.ns]);
  await sh('ip', ['link', 'add', h.veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns]);
  await sh('ip', ['addr', 'add', `${subnet}.${i + 1}.1/24`, 'dev', h.veth]);
  await sh('ip', ['link', 'set', h.veth, 'up']);
  for (const args of [['addr', 'add', `${h.addr}/24`, 'dev', 'eth0'], ['link', 'set', 'eth0', 'up'], ['link', 'set', 'lo', 'up']]) await sh('ip', ['netns', 'exec', h.ns, 'ip', ...args]);
  const cfg = join(dir, `sshd_config.${h.name}`);
  writeFileSync(cfg, [
    `ListenAddress ${h.addr}`, 'Port 22', `HostKey ${join(dir, 'hostkey')}`, `AuthorizedKeysFile ${join(dir, 'id.pub')}`,
    'PermitRootLogin prohibit-password', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'UsePAM no', 'StrictModes no',
    'PidFile none', 'Subsystem sftp /usr/lib/openssh/sftp-server', 'MaxStartups 100', 'MaxSessions 100', '',
  ].join('\n'));
  const script = [
    'set -e',
    ...PRIVATE_DIRS.map((d) => `mount -t tmpfs -o mode=0755 hotpatch-${h.name} ${d}`),
    `${svc} ${PORT} ${h.name} </dev/null >${join(dir, `svc.${h.name}.log`)} 2>&1 &`,
    `exec /usr/sbin/sshd -D -e -f ${cfg}`,
  ].join('\n');
  // setpriv --pdeathsig + unshare --kill-child: if this test process dies without its afterAll,
  // the host's init is killed with it, and with the init every process of its PID namespace.
  h.init = spawn('ip', ['netns', 'exec', h.ns, 'setpriv', '--pdeathsig', 'KILL', 'unshare', '--mount', '--propagation', 'private', '--pid', '--kill-child', '--mount-proc', 'sh', '-c', script], {
    detached: true, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  h.init.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const deadline = Date.now() + 30_000;
  while (!(await reachable(h.addr, 22)) || !(await reachable(h.addr, PORT))) {
    if (Date.now() > deadline || h.init.exitCode !== null) throw new Error(`host ${h.name} did not come up: ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  h.svcPid = findService(h.name);
}

function reachable(addr: string, port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ host: addr, port, timeout: 1000 }, () => {
      s.destroy();
      res(true);
    });
    s.on('error', () => res(false));
    s.on('timeout', () => {
      s.destroy();
      res(false);
    });
  });
}

/** The root-namespace PID of host `name`'s service (by its command line). */
function findService(name: string): number {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readlinkSync(`/proc/${e}/exe`) === svc && readFileSync(`/proc/${e}/cmdline`, 'latin1').split('\0')[2] === name) return Number(e);
    } catch {
      // gone
    }
  }
  throw new Error(`service of ${name} not found`);
}

function applied(h: Host): string[] {
  return listPatches(h.svcPid!).patches.filter((p) => p.state === 'applied').map((p) => p.id);
}

/** A client per host, one request per connection, until stopped; counts requests and failures. */
function load(): { stop(): Promise<{ ok: number; failed: number; answers: Map<string, Set<number>>; errors: string[] }> } {
  let running = true;
  const answers = new Map<string, Set<number>>(hosts.map((h) => [h.name, new Set<number>()]));
  const errors: string[] = [];
  let ok = 0;
  let failed = 0;
  const one = (h: Host): Promise<void> => new Promise((res) => {
    let buf = '';
    const s = connect({ host: h.addr, port: PORT, timeout: 10_000 }, () => s.write('10\n'));
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) {
        const v = Number(buf.trim());
        answers.get(h.name)!.add(v);
        ok++;
        s.destroy();
        res();
      }
    });
    const fail = (why: string) => {
      failed++;
      errors.push(`${h.name}: ${why}`);
      s.destroy();
      res();
    };
    s.on('error', (e) => fail(e.message));
    s.on('timeout', () => fail('timeout'));
    s.on('close', () => {
      if (!buf.includes('\n')) fail('closed without an answer');
    });
  });
  const loops = hosts.map(async (h) => {
    while (running) {
      await one(h);
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return { ok, failed, answers, errors };
    },
  };
}

let inventory = '';
const timings: string[] = [];

async function playbook(file: string, extra: Record<string, string>): Promise<{ code: number; out: string; seconds: number }> {
  const t0 = performance.now();
  const args = ['-i', inventory, join(REPO_ROOT, 'deploy/ansible', file), '-e', JSON.stringify(extra)];
  const env = {
    ...process.env, ANSIBLE_HOST_KEY_CHECKING: 'False', ANSIBLE_PIPELINING: 'True', ANSIBLE_FORKS: '4', ANSIBLE_NOCOLOR: '1',
    ANSIBLE_LOCAL_TEMP: join(dir, 'ansible-local'), ANSIBLE_RETRY_FILES_ENABLED: 'False', ANSIBLE_TIMEOUT: '60',
  };
  return new Promise((res) => {
    // Streamed to stderr as it runs: on a slow machine the task timings show where the time goes.
    const child = spawn('ansible-playbook', args, { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 1_200_000 });
    let out = '';
    const tee = (d: string) => {
      out += d;
      process.stderr.write(d);
    };
    child.stdout.setEncoding('utf8').on('data', tee);
    child.stderr.setEncoding('utf8').on('data', tee);
    child.on('close', (code) => {
      const seconds = (performance.now() - t0) / 1000;
      timings.push(`${file} ${extra.hotpatch_package ? extra.hotpatch_package.split('/').at(-1) : JSON.stringify(extra)}: ${seconds.toFixed(1)} s`);
      res({ code: code ?? -1, out, seconds });
    });
  });
}

/** The hosts of each batch: the default output prints "PLAY [...]" per batch, then "ok: [hostN]" lines. */
function batches(out: string): string[][] {
  const plays = out.split(/^PLAY \[/m).slice(1);
  // Sorted: the hosts of one batch run in parallel and report in any order.
  return plays.map((p) => [...new Set([...p.matchAll(/^(?:ok|changed|fatal): \[(host\d)\]/gm)].map((m) => m[1]!))].sort());
}

async function teardown(): Promise<void> {
  for (const h of hosts) {
    if (h.init?.pid !== undefined && h.init.exitCode === null) {
      try {
        process.kill(-h.init.pid, 'SIGKILL'); // ip, unshare and the namespace's init: the whole PID namespace dies with it
      } catch {
        // gone
      }
    }
  }
  await new Promise((r) => setTimeout(r, 300));
  for (const h of hosts) {
    await run('ip', ['link', 'del', h.veth]).catch(() => undefined);
    await run('ip', ['netns', 'del', h.ns]).catch(() => undefined);
  }
  for (const d of createdDirs) {
    try {
      rmdirSync(d);
    } catch {
      // not empty or in use by someone else: leave it
    }
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hotpatch-fleet-'));
  const t0 = performance.now();
  for (const d of [...PRIVATE_DIRS, '/run/sshd']) {
    if (!existsSync(d)) {
      mkdirSync(d, { recursive: true });
      if (d !== '/run/sshd') createdDirs.push(d);
    }
  }
  await Promise.all([
    run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'id')]),
    run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'hostkey')]),
    buildFixture(),
  ]);
  const tarball = await packTarball();
  for (const [i, h] of hosts.entries()) await startHost(h, i);
  inventory = join(dir, 'inventory.ini');
  writeFileSync(inventory, [
    '[hotpatch]',
    ...hosts.map((h) => `${h.name} ansible_host=${h.addr}`),
    '',
    '[hotpatch:vars]',
    'ansible_user=root',
    `ansible_ssh_private_key_file=${join(dir, 'id')}`,
    "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ControlMaster=no'",
    'ansible_python_interpreter=/usr/bin/python3',
    `hotpatch_tarball=${tarball}`,
    `hotpatch_trusted_keys=${JSON.stringify([pub])}`,
    'hotpatch_agent_mode=process',
    'hotpatch_wait_timeout=60',
    '',
  ].join('\n'));
  timings.push(`setup (build, npm pack, 4 hosts): ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}, 300_000);

afterAll(async () => {
  process.stderr.write(`ansible e2e timings:\n  ${timings.join('\n  ')}\n`);
  await teardown();
}, 60_000);

const health = `bash -c 'exec 3<>/dev/tcp/127.0.0.1/${PORT}; echo 10 >&3; read -r v <&3; test "$v" -lt 100'`;

describe('Ansible rollout over SSH to 4 namespace hosts', () => {
  it('a good patch reaches all 4 hosts in stages (1, 1, 2) with 0 failed requests', async () => {
    for (const h of hosts) expect(applied(h)).toEqual([]);
    const l = load();
    const r = await playbook('rollout.yml', { hotpatch_package: good.path, hotpatch_health_command: health });
    const res = await l.stop();
    expect(r.code, r.out).toBe(0);
    expect(batches(r.out)).toEqual([['host1'], ['host2'], ['host3', 'host4']]);
    for (const h of hosts) expect(applied(h)).toEqual([good.id]);
    expect(res.failed, res.errors.slice(0, 5).join('; ')).toBe(0);
    expect(res.ok).toBeGreaterThan(20);
    for (const h of hosts) expect([...res.answers.get(h.name)!].every((v) => v === 11 || v === 12)).toBe(true);
    for (const h of hosts) expect(res.answers.get(h.name)!.has(12)).toBe(true);
  }, 1_200_000);

  it('a patch whose health check fails is withdrawn on the canary and never reaches the other 3', async () => {
    const l = load();
    const r = await playbook('rollout.yml', { hotpatch_package: bad.path, hotpatch_health_command: health });
    const res = await l.stop();
    expect(r.code, r.out).not.toBe(0);
    expect(r.out).toMatch(new RegExp(`patch ${bad.id} failed its health check on host1 and was withdrawn`));
    expect(batches(r.out)).toEqual([['host1']]);
    for (const h of hosts) expect(applied(h)).toEqual([good.id]);
    for (const h of hosts.slice(1)) expect(listPatches(h.svcPid!).patches.map((p) => p.id)).not.toContain(bad.id);
    expect(res.failed, res.errors.slice(0, 5).join('; ')).toBe(0);
  }, 1_200_000);

  it('rollback.yml withdraws the good patch everywhere, 0 failed requests', async () => {
    const l = load();
    const r = await playbook('rollback.yml', { hotpatch_patch_id: good.id });
    const res = await l.stop();
    expect(r.code, r.out).toBe(0);
    for (const h of hosts) expect(applied(h)).toEqual([]);
    expect(res.failed, res.errors.slice(0, 5).join('; ')).toBe(0);
    for (const h of hosts) expect(findService(h.name)).toBe(h.svcPid); // the same processes all along
  }, 1_200_000);
});
