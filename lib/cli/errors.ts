import { UserFacingError } from '../errors';

export { UserFacingError };

/** A mistake in how shadowvm was called: one line on stderr, exit code 2. */
export class UsageError extends UserFacingError {}
