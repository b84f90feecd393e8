/**
 * replicate/: the replication state machine, checkpoint triggers and their
 * coalescing. (The agent client over the UNIX socket joins it with the live
 * bridge.)
 */
export * from './replicator';
export * from './agent-protocol';
export * from './agent-client';
export * from './duration-histogram';
