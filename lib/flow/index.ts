/**
 * flow/: which conversation a frame belongs to, and the bounded table of
 * per-flow state. In: decoded frames and the direction they travel. Out: a
 * flow entry (created on first sight, LRU-evicted when the table is full).
 */
export * from './key';
export * from './flow-table';
export * from './tcp-replica';
export * from './key-cache';
