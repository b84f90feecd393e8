/**
 * Load through the live bridge in the netns lab (root): wrk in the client
 * namespace against nginx in both replicas. Asserts that every request got
 * an answer and that the bridge did its job meanwhile: it compared the
 * replicas' output (bytes matched), released what agreed, every checkpoint
 * it asked for was done, it never went DEGRADED, and it ends COMPARING.
 * Never how fast: the rate is printed for the reader.
 *
 * Mismatches are not asserted to be zero: the two nginx read the clock at
 * slightly different moments, so a response written across a second
 * boundary carries a different `Date:` header on each side, which the bridge
 * rightly reports (and checkpoints).
 */
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import type { LogFn } from '../../lib/control/logger';
import { stopLabAfterAll, requireRoot } from '../support/lab-helpers';

const PREFIX = 'svmi2';
const WRK_SECONDS = 3;
jest.setTimeout(40_000);

interface WrkResult {
  requests: number;
  /** Socket errors by kind (connect, read, write, timeout); empty when wrk printed no such line. */
  socketErrors: Record<string, number>;
  /** "Non-2xx or 3xx responses: N", 0 when absent. */
  non2xx: number;
  requestsPerSecond: number;
}

/** Reads wrk 4's summary ("N requests in …", "Socket errors: …", "Non-2xx or 3xx responses: N", "Requests/sec: R"). */
function parseWrk(out: string): WrkResult {
  const requests = /^\s*(\d+) requests in /m.exec(out);
  const rate = /^Requests\/sec:\s*([\d.]+)/m.exec(out);
  if (!requests || !rate) throw new Error(`wrk printed no summary:\n${out}`);
  const socketErrors: Record<string, number> = {};
  const errors = /^\s*Socket errors: (.*)$/m.exec(out);
  if (errors) {
    for (const part of errors[1].split(',')) {
      const [kind, count] = part.trim().split(/\s+/);
      socketErrors[kind] = Number(count);
    }
  }
  const non2xx = /^\s*Non-2xx or 3xx responses: (\d+)/m.exec(out);
  return { requests: Number(requests[1]), socketErrors, non2xx: non2xx ? Number(non2xx[1]) : 0, requestsPerSecond: Number(rate[1]) };
}

describe('wrk through the bridge', () => {
  let l: BridgedLab | undefined;
  /** Every replication state change the bridge logged, in order. */
  const states: { from: string; to: string; why: string }[] = [];
  const log: LogFn = (_level, event, fields) => {
    if (event === 'state') states.push(fields as { from: string; to: string; why: string });
  };

  beforeAll(async () => {
    requireRoot('lab-wrk.test.ts');
    // startBridgedLab returns once the bridge is COMPARING (the agent's first checkpoint is done).
    l = await startBridgedLab({ prefix: PREFIX, log });
  }, 30_000);

  stopLabAfterAll(PREFIX, () => l);

  test('answers every request of a wrk run without a socket error, comparing and releasing all along, never DEGRADED', async () => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    const { lab, bridge } = l;
    const url = `http://${lab.serviceIpv4}/${LAB_FILES.hello}`;
    const before = bridge.snapshot();
    expect(before.state).toBe('COMPARING');
    // The log hook sees state changes: the start-up ones are there (so "none during the run" means something).
    expect(states.map((s) => s.to)).toContain('COMPARING');
    const statesBefore = states.length;
    const out = await runInAsync(lab.client.netns, 'wrk', ['-t2', '-c16', `-d${WRK_SECONDS}s`, '--timeout', '5s', url], (WRK_SECONDS + 20) * 1000);
    const result = parseWrk(out);
    const snap = bridge.snapshot();
    console.log(
      `wrk -t2 -c16 -d${WRK_SECONDS}s ${url} through the bridge: ${result.requests} requests, ${result.requestsPerSecond} req/s; ` +
      `bridge: ${snap.flows.created} flows, ${snap.bytesMatched} bytes matched, ${snap.mismatches} mismatches, ` +
      `${snap.checkpoints.done} checkpoints (${JSON.stringify(snap.checkpoints.requested)}), state ${snap.state}`,
    );
    expect(result.requests).toBeGreaterThan(0);
    expect(Object.entries(result.socketErrors).filter(([, n]) => n !== 0)).toEqual([]);
    expect(result.non2xx).toBe(0);
    expect(out).not.toMatch(/Non-2xx/);

    // The bridge compared and released: every response is at least a status line and headers.
    const matched = snap.bytesMatched - before.bytesMatched;
    const releasedBytes = snap.bytesReleased - before.bytesReleased;
    expect(matched).toBeGreaterThan(result.requests * 100);
    expect(releasedBytes).toBeGreaterThan(result.requests * 100);
    expect(snap.flows.created - before.flows.created).toBeGreaterThanOrEqual(16);
    // It stayed protected: no DEGRADED (or FAILED_OVER) at any moment of the run, and it ends COMPARING
    // once the checkpoints the Date: headers caused are done.
    const during = states.slice(statesBefore);
    expect(during.filter((s) => s.to === 'DEGRADED' || s.to === 'FAILED_OVER')).toEqual([]);
    const settled = await waitFor(() => bridge.snapshot().state === 'COMPARING', 5_000);
    const end = bridge.snapshot();
    expect({ settled, state: end.state }).toEqual({ settled: true, state: 'COMPARING' });
    expect(end.checkpoints.failed - before.checkpoints.failed).toBe(0);
    expect(end.checkpoints.done - before.checkpoints.done).toBe(during.filter((s) => s.to === 'CHECKPOINTING').length);
    expect(end.failover.count).toBe(0);
    expect(end.ingress.holdDropped).toBe(0);
  });
});
