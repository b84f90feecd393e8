/**
 * The roles file of `shadowvm run`: which interface holds the primary's and
 * the backup's role now. The config names where the VMs were when the pair
 * was set up; an agent that copies into fresh VMs moves the backup to a new
 * tap at every checkpoint, and a failover makes the backup's tap the
 * primary's. The old taps are then removed. A bridge restarted from its
 * config alone (systemd, after a crash) would look for VMs that are gone:
 * it reads this file first.
 *
 * It lives next to the control socket (`/run/shadowvm/NAME/roles.json` by
 * default: tmpfs, so a reboot, which ends the VMs too, forgets it). It is
 * used only when it was written for the same pair name and the same
 * configured interfaces, and a role is taken from it only when its
 * interface exists; otherwise the config's interface is used, and the log
 * says why.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { BridgeRoles } from '../bridge';

export interface RolesRecord {
  name: string;
  /** The interfaces the config named (the file is ignored if they change). */
  configured: { primary: string; backup: string };
  primary: string;
  backup: string | null;
  /** When it was written (ISO). */
  at: string;
}

export function rolesFileOf(controlSocket: string): string {
  return join(dirname(controlSocket), 'roles.json');
}

/** Writes the roles (a temporary file renamed over it: never half written). */
export function saveRoles(file: string, name: string, configured: { primary: string; backup: string }, roles: BridgeRoles): void {
  const record: RolesRecord = { name, configured, primary: roles.primary, backup: roles.backup, at: new Date().toISOString() };
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(record)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

export interface RestoredRoles {
  primary: string;
  /** Null: the file says the pair had no backup, or its backup's tap is gone: start without one (the agent makes one). */
  backup: string | null;
  /** What the file changed (for the log), or why it was not used; null when there was no file. */
  note: string | null;
  changed: boolean;
}

const interfaceExists = (ifname: string): boolean => /^[^/\0]{1,15}$/.test(ifname) && existsSync(`/sys/class/net/${ifname}`);

/** The interfaces to start with: the file's where it applies (see above), else the config's. */
export function restoreRoles(file: string, name: string, configured: { primary: string; backup: string }, exists: (ifname: string) => boolean = interfaceExists): RestoredRoles {
  const asConfigured = (note: string | null): RestoredRoles => ({ ...configured, note, changed: false });
  let raw: string;
  try {
    raw = readFileSync(file, 'utf8');
  } catch {
    return asConfigured(null);
  }
  let r: Partial<RolesRecord>;
  try {
    r = JSON.parse(raw) as Partial<RolesRecord>;
  } catch (e) {
    return asConfigured(`${file} is not JSON (${(e as Error).message}): the config's interfaces are used`);
  }
  if (r.name !== name || r.configured?.primary !== configured.primary || r.configured?.backup !== configured.backup || typeof r.primary !== 'string') {
    return asConfigured(`${file} was written for another pair or other configured interfaces: the config's are used`);
  }
  const notes: string[] = [];
  let primary = configured.primary;
  if (exists(r.primary)) primary = r.primary;
  else notes.push(`the primary's ${r.primary} is gone: ${configured.primary} as configured`);
  let backup: string | null = null;
  if (typeof r.backup === 'string' && r.backup !== primary && exists(r.backup)) backup = r.backup;
  else if (typeof r.backup === 'string') notes.push(`the backup's ${r.backup} is gone: no backup until the agent makes one`);
  else notes.push('the pair had no backup: none until the agent makes one');
  const changed = primary !== configured.primary || backup !== configured.backup;
  return { primary, backup, changed, note: [`primary ${primary}, backup ${backup ?? 'none'} (written ${r.at ?? 'at an unknown time'})`, ...notes].join('; ') };
}
