/**
 * normalize/: removes what is noise between two replicas (ISNs, timestamps,
 * IP IDs, TTLs, checksums, segmentation) so that compare/ sees only what was
 * said.
 */
export * from './tcp';
export * from './datagram';
