/**
 * control/: how a running bridge is observed and steered from outside.
 *
 * In:  a BridgeSnapshot (taken from the pipeline, ports and agent link) and
 *      the bridge's handlers for control commands.
 * Out: JSON-lines logs, Prometheus text on loopback HTTP, a JSON control
 *      socket, and the `shadowvm status` table.
 */
export * from './logger';
export * from './snapshot';
export * from './snapshot-merge';
export * from './metrics';
export * from './unix-socket';
export * from './control-socket';
export * from './status-format';
