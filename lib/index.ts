/**
 * shadowvm's library face: the pure pipeline and its stages, pcap I/O and
 * the replay. (The CLI lives in lib/cli; live I/O ports load native code
 * and are imported from their own modules.)
 */
export * as packet from './packet';
export * as flow from './flow';
export * as normalize from './normalize';
export * as compare from './compare';
export * as rewrite from './rewrite';
export * as release from './release';
export * as replicate from './replicate';
export * as pipeline from './pipeline';
export * as io from './io';
export { runReplay, replayCaptures, Replayer, formatReplayReport } from './replay';
export type { ReplayReport, ReplayOptions, ReplaySettings } from './replay';
