/** Errors raised by ports when they are used in a way the medium cannot honour. */

/** A port was asked to do something it cannot do (send on a capture, deliver to nobody, act after close). */
export class PortUsageError extends Error {
  constructor(readonly port: string, readonly detail: string) {
    super(`port ${port}: ${detail}`);
    this.name = 'PortUsageError';
  }
}
