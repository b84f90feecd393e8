/**
 * Who may talk to the bridge's UNIX sockets: root, and the user the bridge
 * runs as. The socket file's mode (0600) already keeps others out; this is
 * the second lock, checked on every accepted connection with SO_PEERCRED
 * (socket(7): the credentials the kernel recorded at connect(2), which the
 * peer cannot forge), so a socket made reachable by mistake (a loosened
 * mode, a bind mount) still lets nobody else in.
 *
 * In:  an accepted net.Socket.
 * Out: null when the peer may talk, else why not (for the log line). When
 *      the credentials cannot be read (addon not built, not a UNIX socket),
 *      the file permissions decide alone, and `peerCheck` says so once.
 */
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { loadNativeAddon } from '../io/native-addon';
import { UserFacingError } from '../errors';

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

interface PeerCredAddon {
  peerCredentials(fd: number): PeerCredentials | null;
}

class PeerCredAddonNotBuiltError extends UserFacingError {
  constructor(readonly searched: readonly string[], override readonly cause: unknown) {
    super(`the peer-credentials addon (native/peercred.c) is not built: run \`npm rebuild\` in the repository (looked for ${searched.join(', ')})`);
    this.name = 'PeerCredAddonNotBuiltError';
  }
}

let addon: PeerCredAddon | null | undefined;

function load(): PeerCredAddon | null {
  if (addon === undefined) {
    try {
      addon = loadNativeAddon<PeerCredAddon>('shadowvm_peercred.node', (searched, cause) => new PeerCredAddonNotBuiltError(searched, cause));
    } catch {
      addon = null;
    }
  }
  return addon;
}

/** The peer's credentials, or null when they cannot be read. */
export function peerCredentials(socket: Socket): PeerCredentials | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return null;
  return load()?.peerCredentials(fd) ?? null;
}

/** Whether peer checks can run at all here (the addon loads). */
export function peerCheckAvailable(): boolean {
  return load() !== null;
}

/** The groups of a process (effective and supplementary) from /proc; empty when it cannot be read. */
export function processGroups(pid: number): number[] {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const groups = /^Groups:\s*(.*)$/m.exec(status)?.[1].trim();
    const gid = /^Gid:\s*\d+\s+(\d+)/m.exec(status)?.[1];
    return [...(gid ? [Number(gid)] : []), ...(groups ? groups.split(/\s+/).map(Number) : [])];
  } catch {
    return [];
  }
}

/**
 * Null when the peer may talk to the bridge; else the reason it may not.
 * `allowedGid`: members of this group may talk too (their effective group,
 * or a supplementary one as /proc shows it for the connecting process).
 */
export function refusePeer(socket: Socket, ownUid: number = process.getuid?.() ?? 0, allowedGid?: number): string | null {
  const cred = peerCredentials(socket);
  if (!cred) return null;
  if (cred.uid === 0 || cred.uid === ownUid) return null;
  if (allowedGid !== undefined && (cred.gid === allowedGid || processGroups(cred.pid).includes(allowedGid))) return null;
  return `peer uid ${cred.uid} (pid ${cred.pid}) is neither root nor uid ${ownUid}${allowedGid !== undefined ? ` nor in group ${allowedGid}` : ''}`;
}
