/**
 * release/: holds the primary's output until it is agreed, then lets it go
 * to the client in order, never with an ACK ahead of the backup's.
 */
export * from './held';
