/** One status and one /metrics for a data plane of several workers: their snapshots merged (lib/control/snapshot-merge.ts). */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { renderMetrics } from '../../../lib/control/metrics';
import { BridgeSnapshot, emptyAgentSnapshot, snapshotOf } from '../../../lib/control/snapshot';
import { mergeSnapshots, NOT_ADDED } from '../../../lib/control/snapshot-merge';
import { formatStatus } from '../../../lib/control/status-format';
import { FrameWait } from '../../../lib/io/frame-wait';
import { ethernet } from '../../support/frames';
import { B, C, fromVm, handshake, harness, P } from '../../support/pipeline-harness';
import { sampleSnapshot } from './sample-snapshot';

/** A second worker beside sampleSnapshot(): other counts, an older epoch, its backup port moved already. */
function secondWorker(): BridgeSnapshot {
  const s = sampleSnapshot();
  s.state = 'COMPARING';
  s.uptimeSeconds = 3722;
  s.ports[0] = { ...s.ports[0], rxFrames: 10, rxBytes: 15_000, txFrames: 20, txBytes: 30_000, rxDrops: 1, txErrors: 2 };
  s.ports[2] = { ...s.ports[2], name: 'tap-b2', rxFrames: 7 };
  s.flows = { active: 3, created: 5, evicted: 1 };
  s.checkpoints = { ...s.checkpoints, epoch: 2, done: 2, failed: 0, coalesced: 1, pending: false, lastMs: 30, bytesMoved: 100, durationSeconds: { buckets: [[0.005, 0], [0.01, 1], [0.025, 2]], sum: 0.02, count: 2 } };
  s.malformed = { 'truncated-ipv4': { client: 5, primary: 0, backup: 0 }, 'bad-ipv6': { client: 1, primary: 1, backup: 1 } };
  s.policyActions = { 'arp/forward-primary': 1, 'icmp/forward-primary': 2 };
  s.failover = { ...s.failover, flowsCarried: 3, last: { ...s.failover.last!, detectionToPromotionMs: 0, agoSeconds: 29.5, flowsCarried: 3 } };
  delete s.failover.waiting;
  s.stages = { compare: { out_of_order_dropped: 1, primary_frames: 40 }, ingress: { frames: 30 } };
  s.components = { agent_link: { helloTimeouts: 1, messagesIn: 3 } };
  return Object.assign(s, JSON.parse(JSON.stringify(WORKER_PARTS[1])));
}

/** What sampleSnapshot() leaves out, for worker 0 and worker 1. */
const WORKER_PARTS: Pick<BridgeSnapshot, 'memory' | 'frameWait' | 'inlineSends'>[] = [
  {
    memory: { rssBytes: 310_000_000, heapUsedBytes: 25_000_000, heapSizeBytes: 40_000_000, externalBytes: 2_000_000 },
    frameWait: { seconds: { buckets: [[0.001, 1], [0.01, 2]], sum: 0.01, count: 3 }, maxMs: 12, maxLast10sMs: 3, maxLast60sMs: 12, over10ms: 2, perSecond: [[99, 2], [100, 12]] },
    inlineSends: { on: true, maxFps: 20_000, switches: 4 },
  },
  {
    memory: { rssBytes: 300_000_000, heapUsedBytes: 20_000_000, heapSizeBytes: 30_000_000, externalBytes: 1_000_000 },
    frameWait: { seconds: { buckets: [[0.001, 4], [0.01, 5]], sum: 0.02, count: 6 }, maxMs: 40, maxLast10sMs: 1, maxLast60sMs: 40, over10ms: 1, perSecond: [[100, 40], [101, 1]] },
    inlineSends: { on: false, maxFps: 20_000, switches: 3 },
  },
];

function withWorkerZeroParts(s: BridgeSnapshot): BridgeSnapshot {
  return Object.assign(s, JSON.parse(JSON.stringify(WORKER_PARTS[0])));
}

describe('mergeSnapshots', () => {
  it('gives one worker\'s snapshot back equal, with a summary of that worker', () => {
    const one = withWorkerZeroParts(sampleSnapshot());
    const { workers, ...rest } = mergeSnapshots([one]);
    expect(rest).toStrictEqual(one);
    expect(workers).toEqual([{ index: 0, state: 'CHECKPOINTING', flowsActive: 12, framesIn: { client: 0, primary: 0, backup: 0 }, checkpointEpoch: 5, heapUsedBytes: 25_000_000 }]);
  });

  it('shares no object with the snapshots it merges', () => {
    const w0 = withWorkerZeroParts(sampleSnapshot());
    const merged = mergeSnapshots([w0]);
    merged.replicas[0].role = 'changed';
    merged.failover.waiting!.epoch = 99;
    merged.ports[0].ring!.frames = 1;
    expect(w0).toStrictEqual(withWorkerZeroParts(sampleSnapshot()));
  });

  const merged = mergeSnapshots([withWorkerZeroParts(sampleSnapshot()), secondWorker()]);

  it('adds counters and levels: flows, bytes, mismatches, held output, ingress, malformed, policy, stages, components', () => {
    expect(merged.flows).toEqual({ active: 15, created: 45, evicted: 4 });
    expect(merged.bytesMatched).toBe(2 * 654_321);
    expect(merged.mismatchesByKind.data).toBe(2);
    expect(merged.heldOutput).toEqual({ frames: 8, bytes: 12_000 });
    expect(merged.ingress).toEqual({ heldFrames: 66, holdDropped: 2 });
    expect(merged.malformed).toEqual({
      'truncated-ipv4': { client: 6, primary: 0, backup: 2 },
      'bad-tcp-option': { client: 0, primary: 3, backup: 3 },
      'bad-ipv6': { client: 1, primary: 1, backup: 1 },
    });
    expect(merged.policyActions).toEqual({ 'arp/forward-primary': 11, 'ethertype-0x88cc/drop': 4, 'degraded/forward-primary': 1, 'icmp/forward-primary': 2 });
    expect(merged.stages).toEqual({ compare: { out_of_order_dropped: 6, bad_tcp_options: 1, primary_frames: 40 }, failover: { duplicatesDropped: 2 }, ingress: { frames: 30 } });
    expect(merged.components).toEqual({ control_socket: { connections: 4, closedAbusive: 1 }, agent_link: { helloTimeouts: 3, messagesIn: 3 } });
    expect(merged.agent).toEqual({ connected: true, name: 'qemu', messagesIn: 40, messagesOut: 12, protocolErrors: 2, heartbeatTimeouts: 0 });
  });

  it('merges ports by role: counters and rings add, worker 0\'s names, a moved port named in its worker\'s summary', () => {
    expect(merged.ports.map((p) => [p.role, p.name])).toEqual([['uplink', 'veth-up'], ['primary', 'tap "p"\\0\nx'], ['backup', 'tap-b']]);
    expect(merged.ports[0]).toMatchObject({ rxFrames: 1010, rxBytes: 1_515_000, txFrames: 1010, txBytes: 1_430_000, rxDrops: 3, txErrors: 2 });
    expect(merged.ports[0].ring).toEqual({ frames: 1054, frameSize: 69_632, bytes: 2 * 36_700_160 });
    expect(merged.ports[1].ring).toEqual({ frames: 8192, frameSize: 2048, bytes: 2 * 18_874_368, large: { frames: 310, frameSize: 65_664, fanout: true } });
    expect(merged.ports[1].rxLargeFrames).toBe(240);
    expect(merged.ports[2].rxFrames).toBe(498 + 7);
    expect(merged.workers![0].portNames).toBeUndefined();
    expect(merged.workers![1].portNames).toEqual({ backup: 'tap-b2' });
  });

  it('counts a checkpoint, which every worker answers, once; requests and coalesced triggers add; the epoch is worker 0\'s', () => {
    expect(merged.checkpoints).toEqual({
      epoch: 5,
      requested: { mismatch: 4, timeout: 2, queue: 0, periodic: 2, manual: 2 },
      done: 3, failed: 1, coalesced: 8, pending: true, lastMs: 30, bytesMoved: 100,
      durationSeconds: { buckets: [[0.005, 1], [0.01, 2], [0.025, 3]], sum: 0.0245, count: 3 },
    });
  });

  it('counts the checkpoints requested as told (one per barrier), not as the workers\' requests added', () => {
    const requested = { mismatch: 3, timeout: 1, queue: 0, periodic: 2, manual: 1 };
    const told = mergeSnapshots([withWorkerZeroParts(sampleSnapshot()), secondWorker()], { requested });
    expect(told.checkpoints.requested).toEqual(requested);
    expect(told.checkpoints.requested).not.toBe(requested);
    expect(told.checkpoints.done).toBe(merged.checkpoints.done);
  });

  it('shows the most serious state of any worker, unless told the bridge\'s', () => {
    const w = (state: BridgeSnapshot['state']) => ({ ...sampleSnapshot(), state });
    expect(mergeSnapshots([w('COMPARING'), w('COMPARING')]).state).toBe('COMPARING');
    expect(mergeSnapshots([w('COMPARING'), w('CHECKPOINTING')]).state).toBe('CHECKPOINTING');
    expect(mergeSnapshots([w('CHECKPOINTING'), w('DEGRADED')]).state).toBe('DEGRADED');
    expect(mergeSnapshots([w('FAILED_OVER'), w('DEGRADED')]).state).toBe('FAILED_OVER');
    const told = mergeSnapshots([w('FAILED_OVER'), w('DEGRADED')], { state: 'COMPARING' });
    expect(told.state).toBe('COMPARING');
    expect(told.workers!.map((x) => x.state)).toEqual(['FAILED_OVER', 'DEGRADED']);
  });

  it('counts one failover once, adds the flows each worker carried, and times it by the last worker to promote', () => {
    expect(merged.failover).toEqual({
      count: 1, refused: 0, deferred: 1, waiting: { cause: 'carrier', epoch: 8 }, backupsLost: 0, flowsCarried: 15, flowsLost: 0, flowsUnprotected: 6,
      last: { cause: 'carrier', detail: 'tap-a lost carrier', survivor: 'tap-b', detectionToPromotionMs: 7.2, agoSeconds: 29.5, flowsCarried: 15, backlogFrames: 8, discardedFrames: 4 },
    });
    expect(merged.replicas).toEqual(sampleSnapshot().replicas);
  });

  it('takes the process\'s resident set once and adds the workers\' heaps', () => {
    expect(merged.memory).toEqual({ rssBytes: 310_000_000, heapUsedBytes: 45_000_000, heapSizeBytes: 70_000_000, externalBytes: 3_000_000 });
    expect(merged.uptimeSeconds).toBe(3723.5);
  });

  it('adds the frame-wait histograms and keeps the worst worker\'s maxima, second by second', () => {
    expect(merged.frameWait).toEqual({
      seconds: { buckets: [[0.001, 5], [0.01, 7]], sum: 0.03, count: 9 }, maxMs: 40, maxLast10sMs: 3, maxLast60sMs: 40, over10ms: 3,
      perSecond: [[99, 2], [100, 40], [101, 1]],
    });
  });

  it('leaves out a histogram whose buckets are not worker 0\'s: they cannot be added', () => {
    const other = withWorkerZeroParts(sampleSnapshot());
    other.frameWait!.seconds = { buckets: [[0.5, 9]], sum: 9, count: 9 };
    expect(mergeSnapshots([withWorkerZeroParts(sampleSnapshot()), other]).frameWait!.seconds).toEqual({ buckets: [[0.001, 1], [0.01, 2]], sum: 0.01, count: 3 });
  });

  it('keeps the stalls of every worker, newest last, as many as one worker keeps', () => {
    const stall = (atUnixMs: number) => ({ atUnixMs, waitMs: 12, frames: 1, parts: { gc: 12, starved: 0, 'off-cpu': 0, 'late-wake': 0, 'other-work': 0, breath: 0 }, cause: 'gc' as const, during: [] });
    const byCause = { gc: 2, starved: 0, 'off-cpu': 0, 'late-wake': 0, 'other-work': 0, breath: 0 };
    const a = withWorkerZeroParts(sampleSnapshot());
    const b = withWorkerZeroParts(sampleSnapshot());
    a.frameWait!.stalls = { byCause, recent: [stall(1), stall(4)] };
    b.frameWait!.stalls = { byCause, recent: [stall(2), stall(3)] };
    const stalls = mergeSnapshots([a, b]).frameWait!.stalls!;
    expect(stalls.byCause.gc).toBe(4);
    expect(stalls.recent.map((r) => r.atUnixMs)).toEqual([3, 4]);
  });

  it('closes the inline-send gate if any worker\'s is closed, and adds the switches', () => {
    expect(merged.inlineSends).toEqual({ on: false, maxFps: 20_000, switches: 7 });
  });

  it('sums each worker into a line: its state, flows, frames in by side, epoch and heap', () => {
    expect(merged.workers).toEqual([
      { index: 0, state: 'CHECKPOINTING', flowsActive: 12, framesIn: { client: 0, primary: 0, backup: 0 }, checkpointEpoch: 5, heapUsedBytes: 25_000_000 },
      { index: 1, state: 'COMPARING', flowsActive: 3, framesIn: { client: 30, primary: 40, backup: 0 }, checkpointEpoch: 2, heapUsedBytes: 20_000_000, portNames: { backup: 'tap-b2' } },
    ]);
  });
});

describe('the workers in status and /metrics', () => {
  const merged = mergeSnapshots([withWorkerZeroParts(sampleSnapshot()), secondWorker()]);

  it('shows one line per worker in status, and a port a worker reads elsewhere', () => {
    const lines = formatStatus(merged).split('\n');
    const header = lines.findIndex((l) => l.startsWith('worker '));
    expect(lines[header]).toMatch(/^worker\s+state\s+flows\s+frames in\s+checkpoint\s+heap$/);
    expect(lines[header + 1]).toMatch(/^0\s+CHECKPOINTING\s+12\s+0\s+#5\s+23\.8 MiB$/);
    expect(lines[header + 2]).toMatch(/^1\s+COMPARING\s+3\s+70\s+#2\s+19\.1 MiB$/);
    expect(lines[header + 3]).toBe('worker 1 reads the backup port on tap-b2, worker 0 on tap-b (the name shown above)');
    expect(formatStatus(merged)).toContain('flows: 15 active, 45 created, 4 evicted');
  });

  it('says nothing of workers for one data plane', () => {
    expect(formatStatus(sampleSnapshot())).not.toMatch(/^worker/m);
    expect(renderMetrics(sampleSnapshot())).not.toContain('shadowvm_worker_');
  });

  it('exports per-worker series with a worker label, beside the whole bridge\'s', () => {
    const lines = renderMetrics(merged).split('\n');
    expect(lines).toEqual(expect.arrayContaining([
      '# TYPE shadowvm_worker_flows gauge',
      'shadowvm_worker_flows{worker="0"} 12',
      'shadowvm_worker_flows{worker="1"} 3',
      '# TYPE shadowvm_worker_frames_total counter',
      'shadowvm_worker_frames_total{worker="1",side="client"} 30',
      'shadowvm_worker_frames_total{worker="1",side="primary"} 40',
      'shadowvm_worker_checkpoint_epoch{worker="1"} 2',
      'shadowvm_worker_replication_state{worker="0",state="CHECKPOINTING"} 1',
      'shadowvm_worker_replication_state{worker="1",state="CHECKPOINTING"} 0',
      'shadowvm_worker_heap_used_bytes{worker="0"} 25000000',
      'shadowvm_flows 15',
    ]));
  });
});

// ───────────── every number of a real snapshot has a rule ─────────────

/** A pipeline after traffic: a compared connection, a mismatch, a checkpoint, a malformed frame, an unknown ethertype, a failover; with every optional part. */
function liveSnapshot(): BridgeSnapshot {
  const h = harness();
  handshake(h);
  h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: Buffer.from('hello') }), 10);
  h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: Buffer.from('hello') }), 11);
  h.p.fromVm(PRIMARY, fromVm({ seq: P + 6, ack: C + 1, flags: 'PA', payload: Buffer.from('world') }), 12);
  h.p.fromVm(BACKUP, fromVm({ seq: B + 6, ack: C + 1, flags: 'PA', payload: Buffer.from('WORLD') }), 13);
  h.p.fromClient(Buffer.alloc(6), 14);
  h.p.fromVm(PRIMARY, ethernet({}, 0x9000, Buffer.alloc(46)), 15);
  for (const cp of h.out.checkpoints) h.p.checkpointDone(cp.epoch, 20, 4, { bytes: 1000, pages: 2 });
  h.p.failoverNow('carrier', 'primary lost carrier', 30);
  let now = 1_800_000_000_000_000;
  const wait = new FrameWait(() => now);
  wait.observe(now - 150);
  wait.observe(now - 14_000);
  now += 1_000_000;
  const s = snapshotOf(h.p, {
    name: 'live', startedMs: 0, nowMs: 5000, nowUs: 40, agent: emptyAgentSnapshot(),
    ports: sampleSnapshot().ports,
    components: { agent_link: { messagesIn: 1 }, memory_give_back: { runs: 1, forced: 0 } },
    frameWait: {
      ...wait.snapshot(),
      stalls: {
        byCause: { gc: 1, starved: 0, 'off-cpu': 0, 'late-wake': 0, 'other-work': 0, breath: 0 },
        recent: [{ atUnixMs: 1_800_000_000_000, waitMs: 14, frames: 3, parts: { gc: 13, starved: 0, 'off-cpu': 0, 'late-wake': 0, 'other-work': 1, breath: 0 }, cause: 'gc', during: ['tick 1.0'] }],
      },
    },
    dataPlane: { thread: 'svm-dataplane', tid: 42, policy: 'rr', priority: 10, helpers: { tids: [43, 44], priority: 9 } },
    inlineSends: { on: true, maxFps: 20_000, switches: 2 },
  });
  // A failover waiting for a checkpoint's answer cannot be seen beside a finished one: the sample's.
  return { ...s, failover: { waiting: sampleSnapshot().failover.waiting, ...s.failover } };
}

/** Every number replaced by a distinct one above zero, so that a field the merge dropped or copied cannot pass as 0 + 0. */
function everyNumberDistinct<T>(v: T, next = { n: 1 }): T {
  if (typeof v === 'number') return next.n++ as T;
  if (Array.isArray(v)) return v.map((x) => everyNumberDistinct(x, next)) as T;
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, everyNumberDistinct(x, next)])) as T;
  return v;
}

function leaves(v: unknown, path: string[] = []): [string[], unknown][] {
  if (v && typeof v === 'object') return Object.entries(v).flatMap(([k, x]) => leaves(x, [...path, k]));
  return [[path, v]];
}

/** The NOT_ADDED rule that covers a path: its pattern's segments match the path's first ones ("*": any). */
function notAddedRule(path: string[]): string | undefined {
  for (const [pattern, rule] of Object.entries(NOT_ADDED)) {
    const segs = pattern.split('.');
    if (segs.length <= path.length && segs.every((s, i) => s === '*' || s === path[i])) return rule;
  }
  return undefined;
}

describe('every number of a snapshot has a rule', () => {
  const live = everyNumberDistinct(liveSnapshot());
  const { workers, ...twice } = mergeSnapshots([live, live]);

  it('has something in every part of BridgeSnapshot', () => {
    for (const part of ['memory', 'frameWait', 'holdWait', 'dataPlane', 'inlineSends']) expect(live).toHaveProperty(part);
    expect(live.failover.last).toBeDefined();
    expect(live.ports[1].ring!.large).toBeDefined();
    expect(Object.keys(live.malformed).length).toBeGreaterThan(0);
    expect(Object.keys(live.policyActions).length).toBeGreaterThan(0);
    expect(workers).toHaveLength(2);
  });

  it('doubles every number merged with itself, except those NOT_ADDED lists, which stay as they are', () => {
    const got = new Map(leaves(twice).map(([p, v]) => [p.join('.'), v]));
    const wrong: string[] = [];
    for (const [path, value] of leaves(live)) {
      const key = path.join('.');
      const expected = typeof value === 'number' && !notAddedRule(path) ? 2 * value : value;
      if (got.get(key) !== expected) wrong.push(`${key}: ${String(got.get(key))}, expected ${String(expected)}`);
    }
    expect(wrong).toEqual([]);
    expect([...got.keys()].sort()).toEqual(leaves(live).map(([p]) => p.join('.')).sort());
  });

  it('lists no path in NOT_ADDED that a snapshot does not have', () => {
    const paths = leaves(live).map(([p]) => p);
    for (const pattern of Object.keys(NOT_ADDED)) {
      const segs = pattern.split('.');
      expect([pattern, paths.some((p) => segs.every((s, i) => s === '*' || s === p[i]))]).toEqual([pattern, true]);
    }
  });
});
