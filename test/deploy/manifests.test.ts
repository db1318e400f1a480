/**
 * deploy/ stays what docs/fleet.md says: the Kubernetes DaemonSet (JSON, which YAML accepts) runs
 * the agent with hostPID, no privileged mode, only the capabilities patching needs, the store from a
 * read-only volume; the systemd unit is Type=notify and runs `hotpatch agent`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/native.js';

interface Container {
  command: string[];
  securityContext: { privileged: boolean; allowPrivilegeEscalation: boolean; readOnlyRootFilesystem: boolean; capabilities: { drop: string[]; add: string[] } };
  volumeMounts: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}

describe('deploy/kubernetes/hotpatch-agent.daemonset.json', () => {
  const ds = JSON.parse(readFileSync(join(REPO_ROOT, 'deploy/kubernetes/hotpatch-agent.daemonset.json'), 'utf8'));
  const spec = ds.spec.template.spec;
  const c = spec.containers[0] as Container;

  it('is a DaemonSet with hostPID and nothing else of the host shared', () => {
    expect(ds).toMatchObject({ apiVersion: 'apps/v1', kind: 'DaemonSet' });
    expect(ds.spec.selector.matchLabels).toEqual(ds.spec.template.metadata.labels);
    expect(spec.hostPID).toBe(true);
    expect(spec.hostNetwork).toBe(false);
    expect(spec.hostIPC).toBe(false);
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(spec.containers).toHaveLength(1);
  });

  it("runs the agent unprivileged with the agent unit's capabilities (each shown needed in test/packaging/agent-unit.test.ts)", () => {
    expect(c.command.slice(0, 2)).toEqual(['hotpatch', 'agent']);
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.allowPrivilegeEscalation).toBe(false);
    expect(c.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(c.securityContext.capabilities.drop).toEqual(['ALL']);
    const unitCaps = /^CapabilityBoundingSet=(.*)$/m.exec(readFileSync(join(REPO_ROOT, 'deploy/hotpatch-agent.service'), 'utf8'))![1]!.split(/\s+/).map((x) => x.replace(/^CAP_/, ''));
    expect([...c.securityContext.capabilities.add].sort()).toEqual(unitCaps.sort());
  });

  it('reads the store and the keys from read-only volumes', () => {
    const store = c.volumeMounts.find((m) => m.mountPath === '/var/lib/hotpatch/store');
    expect(store?.readOnly).toBe(true);
    expect(c.command).toContain('/var/lib/hotpatch/store');
    expect(c.volumeMounts.find((m) => m.mountPath === '/etc/hotpatch/trusted.d')?.readOnly).toBe(true);
    for (const m of c.volumeMounts) expect(spec.volumes.map((v: { name: string }) => v.name)).toContain(m.name);
  });
});

describe('deploy/hotpatch-agent.service', () => {
  const unit = readFileSync(join(REPO_ROOT, 'deploy/hotpatch-agent.service'), 'utf8');
  it('is Type=notify and starts hotpatch agent', () => {
    expect(unit).toMatch(/^Type=notify$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/hotpatch agent /m);
    expect(unit).toMatch(/^CapabilityBoundingSet=.*CAP_SYS_PTRACE/m);
  });
});
