/**
 * Names of a protected pair's host interfaces.
 *
 * In:  the pair name given with `--name` (e.g. `web1`).
 * Out: the interface names setup creates and the `ip link` alias that marks
 *      them as shadowvm's, so teardown never deletes a look-alike.
 */
import { createHash } from 'node:crypto';
import { SetupConfigError } from './errors';

/** Linux IFNAMSIZ is 16 including the NUL; `svm-` + name + `-p` must fit in 15. */
export const PAIR_NAME_MAX = 8;
const PAIR_NAME_PATTERN = /^[a-z0-9][a-z0-9_]*$/;

export interface PairNames {
  readonly name: string;
  /** Written with `ip link set … alias`; teardown deletes only interfaces that carry it. */
  readonly alias: string;
  readonly primaryTap: string;
  readonly backupTap: string;
  /** shadowvm's end of the veth uplink (the capture port). */
  readonly vethUplink: string;
  /** The host end of the veth uplink, enslaved to the user's bridge. */
  readonly vethBridgePort: string;
}

export function validatePairName(name: string): void {
  if (typeof name !== 'string' || name.length === 0 || name.length > PAIR_NAME_MAX || !PAIR_NAME_PATTERN.test(name)) {
    throw new SetupConfigError(
      'invalid-name',
      `pair name "${String(name)}" must be 1–${PAIR_NAME_MAX} characters of a-z, 0-9 and _ (starting with a letter or digit) `
      + `so that svm-${String(name)}-p fits Linux's 15-character interface names`,
    );
  }
}

export function pairNames(name: string): PairNames {
  validatePairName(name);
  return {
    name,
    alias: `shadowvm:${name}`,
    primaryTap: `svm-${name}-p`,
    backupTap: `svm-${name}-b`,
    vethUplink: `svm-${name}-u`,
    vethBridgePort: `svm-${name}-h`,
  };
}

/** Every interface name setup may create for this pair. */
export function createdInterfaceNames(names: PairNames): string[] {
  return [names.primaryTap, names.backupTap, names.vethUplink, names.vethBridgePort];
}

/**
 * MAC of the veth end that joins the user's bridge. A bridge without a fixed
 * MAC takes its lowest port MAC as its own; starting with 0xfe (locally
 * administered, as libvirt does for its taps) keeps ours from ever being the
 * lowest, so joining does not change the bridge's address. Derived from host
 * and pair name so a plan (and a dry run) is reproducible.
 */
export function bridgePortMac(hostname: string, name: string): string {
  const digest = createHash('sha256').update(`${hostname}/${name}`).digest();
  return ['fe', ...[...digest.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
