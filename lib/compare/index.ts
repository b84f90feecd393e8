/**
 * compare/: decides whether the two replicas said the same thing. TCP as
 * byte streams by relative position; datagrams one by one. Emits matched
 * positions/counts and the first mismatch with its reason.
 */
export * from './tcp-stream';
export * from './datagram';
