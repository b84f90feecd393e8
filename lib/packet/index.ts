/**
 * packet/: zero-copy views over Ethernet frames, checksums and sequence
 * arithmetic. Pure: no I/O, no state beyond the frame being looked at.
 */
export * from './constants';
export * from './seq';
export * from './checksum';
export * from './views';
export * from './frame';
export * from './tcp-options';
export * from './l4-checksum';
export * from './format';
export * from './slab';
