/**
 * The coordinator of `run --workers` (pure logic): checkpoint and
 * re-protection barriers, the agent's answers under each worker's epoch,
 * backup-attached once for all, role changes told once and followed by the
 * others, bounded waits.
 */
import { ATTACH_TIMEOUT_MS, Coordinator, JOIN_TIMEOUT_MS } from '../../lib/dataplane/coordinator';
import { newestOfEach } from '../../lib/dataplane/threaded-bridge';
import type { ToWorker } from '../../lib/dataplane/protocol';
import type { AgentLinkLike } from '../../lib/replicate/agent-client';
import type { HelloMessage } from '../../lib/replicate/agent-protocol';

interface Said { op: string; epoch: number; arg?: string }

function setup(workers = 3, version = 3) {
  let now = 1000;
  const posted: { to: number; m: ToWorker }[] = [];
  const said: Said[] = [];
  const hello: HelloMessage = { type: 'hello', version, role: 'agent', name: 'test-agent' };
  let connected = true;
  const agent = {
    get agent() { return connected ? hello : null; },
    sendCheckpoint: (r: { epoch: number; reason: string }) => { if (!connected) return false; said.push({ op: 'checkpoint', epoch: r.epoch, arg: r.reason }); return true; },
    sendReprotect: (epoch: number, backup?: string) => { if (!connected) return false; said.push({ op: 'reprotect', epoch, arg: backup }); return true; },
    sendFailover: (epoch: number, survivor?: string) => { said.push({ op: 'failover', epoch, arg: survivor }); return true; },
    sendBackupAttached: (epoch: number, port: string) => { said.push({ op: 'backup-attached', epoch, arg: port }); return true; },
  } as unknown as AgentLinkLike;
  const logs: string[] = [];
  const c = new Coordinator({
    workers, post: (to, m) => posted.push({ to, m }), checkpointTimeoutMs: 5000, reprotectTimeoutMs: 30000,
    log: (_l, event) => logs.push(event), nowMs: () => now,
  });
  c.attach(agent);
  return {
    c, posted, said, logs,
    advance(ms: number) { now += ms; c.tick(); },
    disconnect() { connected = false; },
    take() { return posted.splice(0); },
  };
}

describe('Coordinator: checkpoints are barriers across the workers', () => {
  it('asks the others to join, asks the agent once every worker answered, and answers each under its own epoch', () => {
    const t = setup(3);
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 7, reason: 'mismatch', flow: 'tcp a > b' });
    const joins = t.take();
    expect(joins.map((p) => [p.to, p.m.type])).toEqual([[0, 'join'], [2, 'join']]);
    expect(joins[0].m).toEqual(expect.objectContaining({ kind: 'checkpoint', reason: 'mismatch', flow: 'worker 1: tcp a > b' }));
    expect(t.said).toEqual([]);
    // Worker 0 joins (its request first, then its answer); worker 2's request crosses the join.
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 3, reason: 'mismatch', flow: 'worker 1: tcp a > b' });
    t.c.fromWorker(0, { type: 'joined', kind: 'checkpoint', ok: true });
    expect(t.said).toEqual([]);
    t.c.fromWorker(2, { type: 'to-agent', op: 'checkpoint', epoch: 12, reason: 'timeout' });
    expect(t.said).toEqual([{ op: 'checkpoint', epoch: 1, arg: 'mismatch' }]);
    t.c.fromWorker(2, { type: 'joined', kind: 'checkpoint', ok: true }); // late: changes nothing
    expect(t.said).toHaveLength(1);
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 4, bytes: 100 });
    const answers = t.take();
    expect(answers.map((p) => [p.to, p.m.type === 'agent' && p.m.word.ev === 'checkpoint-done' ? p.m.word.m.epoch : null])).toEqual([[0, 3], [1, 7], [2, 12]]);
    expect(t.c.busy).toBe(false);
  });

  it('a worker that refuses is left out; none joined: nothing is asked', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'manual' });
    t.take();
    t.c.fromWorker(1, { type: 'joined', kind: 'checkpoint', ok: false });
    expect(t.said).toEqual([{ op: 'checkpoint', epoch: 1, arg: 'manual' }]);
    t.c.listener.checkpointFailed({ type: 'checkpoint-failed', epoch: 1, error: 'no space' });
    const answers = t.take();
    expect(answers).toHaveLength(1);
    expect(answers[0]).toEqual({ to: 0, m: { type: 'agent', word: { ev: 'checkpoint-failed', m: { type: 'checkpoint-failed', epoch: 1, error: 'no space' } } } });
  });

  it('a request while the agent works waits, then starts the next barrier; a late answer is ignored', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'manual' });
    expect(t.said).toHaveLength(1);
    t.take();
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 2, reason: 'timeout' }); // worker 0 gave up and asks again
    expect(t.said).toHaveLength(1);
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 1, bytes: 0 });
    const after = t.take();
    // Answers to the first barrier, then a join for the second (worker 1 was not part of it yet).
    expect(after.map((p) => p.m.type)).toEqual(['agent', 'agent', 'join']);
    expect(after[2].to).toBe(1);
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 2, reason: 'timeout' });
    expect(t.said.map((s) => s.epoch)).toEqual([1, 2]);
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 1, bytes: 0 }); // a duplicate of the old answer
    expect(t.take()).toEqual([]);
    expect(t.c.counters.requests_waited).toBe(1);
  });

  it('counts a barrier as one checkpoint requested, under its first request\'s reason, however many workers asked', () => {
    const t = setup(2);
    // Both workers ask as the agent connects: one barrier, one checkpoint.
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'manual' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'manual' });
    expect(t.said).toHaveLength(1);
    expect(t.c.checkpointsRequested).toEqual({ mismatch: 0, timeout: 0, queue: 0, periodic: 0, manual: 1 });
    // A request that waited for it is the next checkpoint.
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 2, reason: 'mismatch' });
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 1, bytes: 0 });
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 2, reason: 'timeout' });
    expect(t.said).toHaveLength(2);
    expect(t.c.checkpointsRequested).toEqual({ mismatch: 1, timeout: 0, queue: 0, periodic: 0, manual: 1 });
    // A re-protection is not a checkpoint.
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 2, ms: 1, bytes: 0 });
    t.c.fromWorker(0, { type: 'to-agent', op: 'reprotect', epoch: 3 });
    t.c.fromWorker(1, { type: 'to-agent', op: 'reprotect', epoch: 3 });
    expect(t.said.map((x) => x.op)).toEqual(['checkpoint', 'checkpoint', 'reprotect']);
    expect(t.c.checkpointsRequested).toEqual({ mismatch: 1, timeout: 0, queue: 0, periodic: 0, manual: 1 });
  });

  it('a worker that does not answer a join is left out after JOIN_TIMEOUT_MS', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.advance(JOIN_TIMEOUT_MS - 1);
    expect(t.said).toEqual([]);
    t.advance(2);
    expect(t.said).toHaveLength(1);
    expect(t.logs).toContain('barrier-join-timeout');
    expect(t.c.counters.join_timeouts).toBe(1);
  });

  it('no agent: every part fails at once', () => {
    const t = setup(2);
    t.disconnect();
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 4, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 9, reason: 'manual' });
    const failed = t.take().filter((p) => p.m.type === 'agent');
    expect(failed.map((p) => [p.to, p.m.type === 'agent' && p.m.word.ev === 'checkpoint-failed' ? p.m.word.m.epoch : null])).toEqual([[0, 4], [1, 9]]);
    expect(t.c.busy).toBe(false);
  });

  it('the agent disconnects mid-barrier: the barrier and what waited are dropped, the word reaches every worker', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 2, reason: 'mismatch' });
    t.take();
    t.c.listener.disconnected('socket closed');
    expect(t.take().map((p) => [p.to, p.m.type])).toEqual([[0, 'agent'], [1, 'agent']]);
    expect(t.c.busy).toBe(false);
  });

  it('checkpoint-done naming a port: backup-attached goes to the agent once, when every worker has attached', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 5, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 6, reason: 'mismatch' });
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 30, bytes: 1 << 20, port: 'tap-b2' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'backup-attached', epoch: 6, port: 'tap-b2' });
    expect(t.said.filter((s) => s.op === 'backup-attached')).toEqual([]);
    // A new request meanwhile waits for the attachment to finish.
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 7, reason: 'mismatch' });
    expect(t.said.filter((s) => s.op === 'checkpoint')).toHaveLength(1);
    t.c.fromWorker(0, { type: 'to-agent', op: 'backup-attached', epoch: 5, port: 'tap-b2' });
    expect(t.said.filter((s) => s.op === 'backup-attached')).toEqual([{ op: 'backup-attached', epoch: 1, arg: 'tap-b2' }]);
    expect(t.c.busy).toBe(true); // the waiting request's barrier
  });

  it('a worker that never attaches: backup-attached after ATTACH_TIMEOUT_MS', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 5, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 6, reason: 'mismatch' });
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 30, bytes: 0, port: 'tap-b' });
    t.c.fromWorker(0, { type: 'to-agent', op: 'backup-attached', epoch: 5, port: 'tap-b' });
    t.advance(ATTACH_TIMEOUT_MS + 1);
    expect(t.said.filter((s) => s.op === 'backup-attached')).toHaveLength(1);
    expect(t.c.counters.attach_timeouts).toBe(1);
    expect(t.c.busy).toBe(false);
  });

  it('no answer from the agent: the barrier ends after the checkpoint timeout', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.advance(5000);
    expect(t.c.busy).toBe(true);
    t.advance(JOIN_TIMEOUT_MS + 1);
    expect(t.c.busy).toBe(false);
    expect(t.c.counters.barrier_timeouts).toBe(1);
  });
});

describe('Coordinator: role changes are one for all workers', () => {
  it('the first report of a generation is told to the agent once and followed by every other worker; duplicates are dropped', () => {
    const t = setup(3);
    t.c.fromWorker(2, { type: 'roles', generation: 1, change: { type: 'failover', cause: 'carrier', detail: 'worker 2: p lost carrier', survivor: 'tap-b' } });
    expect(t.said).toEqual([{ op: 'failover', epoch: 1, arg: 'tap-b' }]);
    const follows = t.take();
    expect(follows.map((p) => [p.to, p.m.type])).toEqual([[0, 'follow'], [1, 'follow']]);
    // The others report the same change (they saw the carrier too, or followed).
    t.c.fromWorker(0, { type: 'roles', generation: 1, change: { type: 'failover', cause: 'carrier', detail: 'worker 0', survivor: 'tap-b' } });
    t.c.fromWorker(1, { type: 'roles', generation: 1, change: { type: 'failover', cause: 'agent', detail: 'worker 1', survivor: 'tap-b' } });
    expect(t.said).toHaveLength(1);
    expect(t.take()).toEqual([]);
    expect(t.c.counters.role_reports_duplicate).toBe(2);
  });

  it('a failover ends the checkpoint barrier in flight; the re-protection that follows is a barrier, joined after the follow', () => {
    const t = setup(2);
    t.c.fromWorker(0, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.c.fromWorker(1, { type: 'to-agent', op: 'checkpoint', epoch: 1, reason: 'mismatch' });
    t.take();
    t.c.fromWorker(0, { type: 'roles', generation: 1, change: { type: 'failover', cause: 'silence', detail: 'd', survivor: 'tap-b' } });
    expect(t.c.busy).toBe(false);
    t.c.fromWorker(0, { type: 'to-agent', op: 'reprotect', epoch: 2, backup: 'tap-a' });
    const msgs = t.take();
    expect(msgs.map((p) => [p.to, p.m.type])).toEqual([[1, 'follow'], [1, 'join']]);
    t.c.fromWorker(1, { type: 'to-agent', op: 'reprotect', epoch: 2, backup: 'tap-a' });
    expect(t.said.map((s) => s.op)).toEqual(['checkpoint', 'failover', 'reprotect']);
    expect(t.said[2]).toEqual({ op: 'reprotect', epoch: 2, arg: 'tap-a' });
    // The late answer to the abandoned checkpoint (agent epoch 1) is not taken for the re-protection (epoch 2).
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 1, ms: 1, bytes: 0 });
    expect(t.take()).toEqual([]);
    t.c.listener.checkpointDone({ type: 'checkpoint-done', epoch: 2, ms: 900, bytes: 0 });
    expect(t.take().map((p) => p.to)).toEqual([0, 1]);
  });

  it('the agent\'s words about the VMs go to every worker', () => {
    const t = setup(3);
    t.c.listener.primaryDown({ type: 'primary-down', reason: 'qemu exited' });
    t.c.listener.backupDown({ type: 'backup-down', reason: 'qemu exited' });
    expect(t.take().map((p) => p.to)).toEqual([0, 1, 2, 0, 1, 2]);
  });
});

describe('newestOfEach: `shadowvm flows` over several workers', () => {
  it('takes the newest of every worker in turn, and gives them back oldest first', () => {
    expect(newestOfEach([['a1', 'a2', 'a3'], ['b1']], 3)).toEqual(['a2', 'a3', 'b1']);
    expect(newestOfEach([['a1', 'a2'], ['b1', 'b2']], 10)).toEqual(['a1', 'b1', 'a2', 'b2']);
    expect(newestOfEach([[], ['b1', 'b2', 'b3']], 2)).toEqual(['b2', 'b3']);
    expect(newestOfEach([[], []], 5)).toEqual([]);
    expect(newestOfEach([['a1']], 0)).toEqual([]);
  });
});
