/**
 * Where setup keeps what it changed on a user's own uplink, so that teardown
 * can put it back: `/run/shadowvm/NAME/setup-uplink.json` (the pair's
 * runtime folder; /run is emptied at boot, as are the settings it records).
 *
 * In:  SavedUplinkState from setup; a pair name from teardown.
 * Out: the file (0600, in a 0700 folder, written whole through a rename), or
 *      the state read back; SetupConfigError for a file that is not ours.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SetupConfigError } from './errors';
import type { SavedUplinkState, Step } from './plan';

export const DEFAULT_RUNTIME_DIR = '/run/shadowvm';
const FILE_VERSION = 1;

export function savedUplinkPath(name: string, runtimeDir = DEFAULT_RUNTIME_DIR): string {
  return join(runtimeDir, name, 'setup-uplink.json');
}

function isArgv(v: unknown): v is string[] {
  return Array.isArray(v) && v.length > 0 && v.every((a) => typeof a === 'string');
}

/** The saved state, or undefined when setup saved none. */
export function readSavedUplink(path: string): SavedUplinkState | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SetupConfigError('foreign-state', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let parsed: { version?: unknown; uplink?: unknown; restore?: unknown };
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = {};
  }
  const restore = parsed.restore;
  const ok = parsed.version === FILE_VERSION && typeof parsed.uplink === 'string' && Array.isArray(restore)
    && restore.every((s: { why?: unknown; argv?: unknown }) => typeof s?.why === 'string' && isArgv(s.argv));
  if (!ok) {
    throw new SetupConfigError('foreign-state', `${path} is not a uplink state saved by shadowvm setup (version ${FILE_VERSION}): restore the uplink by hand and remove the file`);
  }
  const uplink = parsed.uplink as string;
  return { uplink, restore: (restore as Array<{ why: string; argv: string[] }>).map((s): Step => ({ why: s.why, argv: s.argv, ifname: uplink })) };
}

export function writeSavedUplink(path: string, state: SavedUplinkState): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  const body = { version: FILE_VERSION, uplink: state.uplink, restore: state.restore.map((s) => ({ why: s.why, argv: s.argv })) };
  writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, path);
}

/** Removes the file, and its folder when nothing else is in it (the bridge's sockets may be). */
export function removeSavedUplink(path: string): void {
  rmSync(path, { force: true });
  try {
    rmdirSync(dirname(path));
  } catch {
    // Not empty, or already gone.
  }
}
