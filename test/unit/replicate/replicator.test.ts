import { CheckpointRequest, DEFAULT_REPLICATOR_CONFIG, ReplicationState, Replicator } from '../../../lib/replicate';

function setup(agent = true, cfg = {}) {
  const sent: CheckpointRequest[] = [];
  const done: number[] = [];
  const states: [ReplicationState, ReplicationState][] = [];
  const r = new Replicator({ ...DEFAULT_REPLICATOR_CONFIG, ...cfg }, {
    sendCheckpoint: (req) => sent.push(req),
    checkpointDone: (rec) => done.push(rec.epoch),
    stateChanged: (from, to) => states.push([from, to]),
  }, 0, agent);
  return { r, sent, done, states };
}

describe('Replicator', () => {
  it('sends one checkpoint with its reason and flow, and coalesces the triggers that follow', () => {
    const { r, sent } = setup();
    expect(r.request('mismatch', 'tcp a > b', 10)).toBe(true);
    expect(r.request('timeout', 'tcp c > d', 20)).toBe(false);
    expect(r.request('queue', undefined, 30)).toBe(false);
    expect(sent).toEqual([{ epoch: 1, reason: 'mismatch', flow: 'tcp a > b', timeUs: 10 }]);
    expect(r.coalesced).toBe(2);
    expect(r.history[0].coalesced).toBe(2);
    expect(r.state).toBe('CHECKPOINTING');
    expect(r.holdingIngress).toBe(true);
  });

  it('returns to COMPARING when the agent answers the outstanding epoch, and ignores stale answers', () => {
    const { r, done } = setup();
    r.request('mismatch', undefined, 0);
    r.done(7, 10);
    expect(r.state).toBe('CHECKPOINTING');
    r.done(1, 5000);
    expect(r.state).toBe('COMPARING');
    expect(done).toEqual([1]);
    expect(r.history[0]).toMatchObject({ outcome: 'done', ms: 5 });
  });

  it('goes DEGRADED when the agent does not answer in time, and retries with back-off', () => {
    const { r, sent } = setup(true, { checkpointTimeoutMs: 100, retryInitialMs: 1000, retryMaxMs: 4000 });
    r.request('queue', 'f', 0);
    r.tick(100_001);
    expect(r.state).toBe('DEGRADED');
    expect(r.comparing).toBe(false);
    expect(r.request('mismatch', 'g', 200_000)).toBe(false); // inside the back-off
    r.tick(1_100_002);
    expect(sent.map((s) => s.reason)).toEqual(['queue', 'queue']);
    expect(r.state).toBe('CHECKPOINTING');
    r.failed(2, 'copy failed', 1_200_000);
    r.tick(2_200_000);
    expect(sent.length).toBe(2); // next retry waits 2 s
    r.tick(3_200_001);
    expect(sent.length).toBe(3);
  });

  it('starts DEGRADED without an agent and resynchronizes as soon as one connects', () => {
    const { r, sent } = setup(false);
    expect(r.state).toBe('DEGRADED');
    expect(r.request('mismatch', undefined, 10)).toBe(false);
    r.agentConnected(true, 20);
    expect(sent).toHaveLength(1);
    expect(r.state).toBe('CHECKPOINTING');
  });

  it('fails the outstanding checkpoint when the agent disconnects', () => {
    const { r } = setup();
    r.request('manual', undefined, 0);
    r.agentConnected(false, 5);
    expect(r.state).toBe('DEGRADED');
    expect(r.history[0]).toMatchObject({ outcome: 'failed', error: 'agent disconnected' });
  });

  it('asks for a periodic checkpoint when the maximum interval has passed', () => {
    const { r, sent } = setup(true, { maxIntervalMs: 50 });
    r.tick(40_000);
    expect(sent).toHaveLength(0);
    r.tick(50_001);
    expect(sent.map((s) => s.reason)).toEqual(['periodic']);
  });
});
