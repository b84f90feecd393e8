/**
 * The one base class of errors a user caused and can fix (a bad option, a
 * missing file, an interface that does not exist, a socket in use). The CLI
 * prints their message as one line and exits 2; any other error is a bug and
 * may print a stack.
 */
export class UserFacingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
