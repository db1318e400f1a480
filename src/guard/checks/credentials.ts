/**
 * Structure 8: credentials, capabilities, no_new_privs and seccomp. Two checks:
 * - on their own (what `verify` can say without history): an effective uid/gid 0 with an
 *   unprivileged real id, when the executable is not set-user/group-id root;
 * - against the baseline first seen for this process (pid + start time; re-taken after exec):
 *   an id that was non-zero becoming 0, an id outside the baseline's ids without CAP_SETUID/SETGID,
 *   capabilities outside the baseline's permitted set, no_new_privs cleared, seccomp removed.
 *   Allowed transitions: dropping privileges, setting no_new_privs, adding seccomp filters,
 *   switching among the ids the baseline already held (saved-set semantics).
 */
import { statSync } from 'node:fs';
import type { ProcessContext } from '../context.js';
import { makeFinding, type Finding } from '../finding.js';
import type { CredentialBaseline } from '../state.js';

const CAP_SETGID = 6n;
const CAP_SETUID = 7n;

function snapshot(ctx: ProcessContext): Omit<CredentialBaseline, 'firstSeen'> {
  const s = ctx.status;
  const hex = (v: bigint) => v.toString(16).padStart(16, '0');
  return {
    exe: ctx.identity.exe,
    uid: [s.uid.real, s.uid.effective, s.uid.saved, s.uid.fs],
    gid: [s.gid.real, s.gid.effective, s.gid.saved, s.gid.fs],
    groups: [...s.groups],
    capPrm: hex(s.capPrm),
    capEff: hex(s.capEff),
    capBnd: hex(s.capBnd),
    capAmb: hex(s.capAmb),
    noNewPrivs: s.noNewPrivs,
    seccomp: s.seccomp,
  };
}

function exeMode(pid: number): { uid: number; gid: number; mode: number } | undefined {
  try {
    const st = statSync(`/proc/${pid}/exe`);
    return { uid: st.uid, gid: st.gid, mode: st.mode };
  } catch {
    return undefined;
  }
}

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const ID_NAMES = ['real', 'effective', 'saved', 'filesystem'];

/** Checks structure 8 for one process. */
export function checkCredentials(ctx: ProcessContext): Finding[] {
  const out: Finding[] = [];
  const now = snapshot(ctx);
  const f = (kind: Finding['kind'], severity: Finding['severity'], detail: string) =>
    makeFinding({ pid: ctx.pid, code: 8, kind, severity, module: now.exe || null, detail });
  const exe = exeMode(ctx.pid);
  const [ruid, euid] = now.uid;
  const [rgid, egid] = now.gid;
  if (euid === 0 && ruid !== 0 && !(exe !== undefined && (exe.mode & S_ISUID) !== 0 && exe.uid === 0)) {
    out.push(f('effective-root', 'critical', `effective uid 0 with real uid ${ruid}, but ${now.exe} is not set-user-id root`));
  }
  if (egid === 0 && rgid !== 0 && !(exe !== undefined && (exe.mode & S_ISGID) !== 0 && exe.gid === 0)) {
    out.push(f('effective-root', 'high', `effective gid 0 with real gid ${rgid}, but ${now.exe} is not set-group-id root`));
  }
  const key = `${ctx.pid}:${ctx.proc.startTime}`;
  let base = ctx.options.state.firstSeenCredentials(key, now);
  if (base.exe !== now.exe) {
    // exec() legitimately changes credentials (set-id programs): start a new baseline.
    delete ctx.options.state.baselines[key];
    base = ctx.options.state.firstSeenCredentials(key, now);
  }
  const prm = BigInt(`0x${base.capPrm}`);
  const baseEff = BigInt(`0x${base.capEff}`);
  for (const [what, ids, baseIds, cap] of [
    ['uid', now.uid, base.uid, CAP_SETUID],
    ['gid', now.gid, base.gid, CAP_SETGID],
  ] as const) {
    for (let i = 0; i < 4; i++) {
      const was = baseIds[i]!;
      const is = ids[i]!;
      if (was === is) continue;
      if (is === 0 && !baseIds.includes(0)) {
        out.push(f('credentials-changed', 'critical', `${ID_NAMES[i]} ${what} became 0 (was ${was} when first seen at ${base.firstSeen})`));
      } else if (is === 0) {
        // Allowed by the kernel through the saved id, but a privilege gain since first seen.
        out.push(f('credentials-changed', 'high', `${ID_NAMES[i]} ${what} went from ${was} back to 0 since first seen at ${base.firstSeen}`));
      } else if (!baseIds.includes(is) && (baseEff & (1n << cap)) === 0n && !baseIds.includes(0)) {
        out.push(f('credentials-changed', 'high', `${ID_NAMES[i]} ${what} changed from ${was} to ${is} without CAP_SET${what.toUpperCase()}`));
      }
    }
  }
  const newPrm = BigInt(`0x${now.capPrm}`);
  const newEff = BigInt(`0x${now.capEff}`);
  const gained = (newPrm | newEff) & ~prm;
  if (gained !== 0n) out.push(f('capabilities-gained', 'critical', `capabilities 0x${gained.toString(16)} appeared that were not in the permitted set first seen (0x${base.capPrm})`));
  const bnd = BigInt(`0x${base.capBnd}`);
  const newBnd = BigInt(`0x${now.capBnd}`);
  if ((newBnd & ~bnd) !== 0n) out.push(f('capabilities-gained', 'critical', `bounding set grew by 0x${(newBnd & ~bnd).toString(16)}`));
  if (base.noNewPrivs && !now.noNewPrivs) out.push(f('nonewprivs-cleared', 'critical', 'no_new_privs was set when first seen and is now cleared'));
  if (base.seccomp > 0 && now.seccomp < base.seccomp) out.push(f('seccomp-disabled', 'critical', `seccomp mode went from ${base.seccomp} to ${now.seccomp}`));
  return out;
}
