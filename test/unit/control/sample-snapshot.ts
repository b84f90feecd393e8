/** A BridgeSnapshot with something in every field, including label values that need escaping. */
import { BridgeSnapshot } from '../../../lib/control/snapshot';

export function sampleSnapshot(): BridgeSnapshot {
  return {
    name: 'lab',
    uptimeSeconds: 3723.5,
    state: 'CHECKPOINTING',
    ports: [
      { role: 'uplink', name: 'veth-up', rxFrames: 1000, rxBytes: 1_500_000, txFrames: 990, txBytes: 1_400_000, rxDrops: 2, txErrors: 0, ring: { frames: 527, frameSize: 69_632, bytes: 36_700_160 } },
      { role: 'primary', name: 'tap "p"\\0\nx', rxFrames: 500, rxBytes: 700_000, txFrames: 1000, txBytes: 1_500_000, rxDrops: 0, txErrors: 1, rxLargeFrames: 120, ring: { frames: 4096, frameSize: 2048, bytes: 18_874_368, large: { frames: 155, frameSize: 65_664, fanout: true } } },
      { role: 'backup', name: 'tap-b', rxFrames: 498, rxBytes: 699_000, txFrames: 1000, txBytes: 1_500_000, rxDrops: 0, txErrors: 0 },
    ],
    flows: { active: 12, created: 40, evicted: 3 },
    bytesMatched: 654_321,
    bytesReleased: 650_000,
    mismatches: 2,
    mismatchesByKind: { data: 1, syn: 0, 'syn-options': 1, fin: 0, rst: 0, datagram: 0, 'datagram-window': 0 },
    checkpoints: {
      epoch: 5,
      requested: { mismatch: 2, timeout: 1, queue: 0, periodic: 1, manual: 1 },
      done: 3,
      failed: 1,
      coalesced: 7,
      pending: true,
      lastMs: 12.5,
      durationSeconds: { buckets: [[0.005, 1], [0.01, 2], [0.025, 3]], sum: 0.0245, count: 3 },
    },
    heldOutput: { frames: 4, bytes: 6000 },
    ingress: { heldFrames: 33, holdDropped: 1 },
    malformed: {
      'truncated-ipv4': { client: 1, primary: 0, backup: 2 },
      'bad-tcp-option': { client: 0, primary: 3, backup: 3 },
    },
    policyActions: { 'arp/forward-primary': 10, 'ethertype-0x88cc/drop': 4, 'degraded/forward-primary': 1 },
    agent: { connected: true, name: 'qemu', messagesIn: 20, messagesOut: 6, protocolErrors: 1, heartbeatTimeouts: 0 },
    replicas: [{ port: 'tap-a', role: 'dead' }, { port: 'tap-b', role: 'promoted' }],
    failover: {
      count: 1, refused: 0, deferred: 1, waiting: { cause: 'carrier', epoch: 8 }, backupsLost: 0, flowsCarried: 12, flowsLost: 0, flowsUnprotected: 3,
      last: { cause: 'carrier', detail: 'tap-a lost carrier', survivor: 'tap-b', detectionToPromotionMs: 7.2, agoSeconds: 30, flowsCarried: 12, backlogFrames: 4, discardedFrames: 2 },
    },
    stages: { compare: { out_of_order_dropped: 5, bad_tcp_options: 1 }, failover: { duplicatesDropped: 2 } },
    components: { control_socket: { connections: 4, closedAbusive: 1 }, agent_link: { helloTimeouts: 2 } },
  };
}
