/**
 * Errors of `shadowvm setup` / `teardown`. Each carries one line a user can
 * act on: which interface, which option, which command.
 */
import { UserFacingError } from '../errors';

export type SetupConfigProblem =
  | 'invalid-name'
  | 'invalid-option'
  | 'unknown-uplink'
  | 'unusable-uplink'
  | 'unknown-bridge'
  | 'not-a-bridge'
  | 'unknown-owner'
  | 'name-conflict'
  | 'foreign-state';

/** The options or the host's current state forbid a setup; nothing was changed. */
export class SetupConfigError extends UserFacingError {
  constructor(readonly problem: SetupConfigProblem, message: string) {
    super(message);
    this.name = 'SetupConfigError';
  }
}

/** The process may not change network interfaces (EPERM/EACCES from ip, ethtool or sysctl). */
export class SetupPermissionError extends UserFacingError {
  constructor(readonly command?: readonly string[], readonly detail?: string) {
    super(
      'shadowvm setup/teardown needs root or CAP_NET_ADMIN'
      + (command ? ` (${command.join(' ')}: ${detail ?? 'Operation not permitted'})` : ''),
    );
    this.name = 'SetupPermissionError';
  }
}

/**
 * A step failed. For setup, the steps done before it were undone in reverse
 * order (`undoFailures` lists what could not be undone); for teardown, the
 * remaining steps still ran.
 */
export class SetupStepError extends UserFacingError {
  constructor(
    readonly command: readonly string[],
    readonly detail: string,
    readonly undone: number,
    readonly undoFailures: readonly string[],
  ) {
    super(
      `${command.join(' ')} failed: ${detail}`
      + (undone > 0 || undoFailures.length > 0 ? `; undid ${undone} earlier step(s)` : '')
      + (undoFailures.length > 0 ? `, but could not undo: ${undoFailures.join('; ')}` : ''),
    );
    this.name = 'SetupStepError';
  }
}
