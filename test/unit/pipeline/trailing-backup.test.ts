/**
 * The `timeout` trigger tells a stuck backup from a slow one (issue 9's
 * timeout storms): the primary's oldest held output may wait past
 * `maxUnmatchedAgeMs` while the backup keeps saying more on that stream,
 * up to TRAILING_GRACE times the limit.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { PACED_GRACE, PACED_MAX_AGE, TRAILING_GRACE } from '../../../lib/pipeline/pipeline';
import { l4ChecksumIsValid } from '../../support/frames';
import { B, C, P, SYN_OPTS, ackOf, fromClient, fromVm, handshake, harness, seqOf } from '../../support/pipeline-harness';
import { decodeFrame } from '../../../lib/packet/frame';

const payloadOf = (f: Buffer) => Buffer.from(decodeFrame(f).payload()).toString();

const MS = 1000;
const seg = (base: number, i: number) => fromVm({ seq: base + 1 + i * 100, ack: C + 1, flags: 'PA', payload: String.fromCharCode(97 + (i % 26)).repeat(100) });
const timeouts = (h: ReturnType<typeof harness>) => h.out.checkpoints.filter((c) => c.reason === 'timeout').length;

describe('a backup that trails the primary', () => {
  it('waits while the backup keeps progressing, and asks for a checkpoint once it stops', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 5; i++) h.p.fromVm(PRIMARY, seg(P, i), 10 * MS);
    // The backup says the same, 80 ms apart: each piece later than the limit after the primary's.
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(BACKUP, seg(B, i), (90 + 80 * i) * MS);
      h.p.tick((100 + 80 * i) * MS);
      h.p.tick((160 + 80 * i) * MS);
    }
    expect(timeouts(h)).toBe(0);
    expect(h.p.stageCounters().compare.backup_trailing_waits).toBeGreaterThan(0);
    expect(h.out.client).toHaveLength(1 + 3); // SYN-ACK, then what both said
    // The backup goes quiet: 100 ms after its last word the wait is over.
    h.p.tick(300 * MS);
    expect(timeouts(h)).toBe(0);
    h.p.tick(360 * MS);
    expect(timeouts(h)).toBe(1);
    // The timeout says why, once: 5 pieces held since 10 ms, the backup said 3 of them and nothing since 250 ms.
    const late = h.logged.filter((l) => l.event === 'backup-late').map((l) => l.fields);
    expect(late).toEqual([{ flow: expect.any(String), heldMs: 350, backupQuietMs: 110, primaryAheadBytes: 200, backupAheadBytes: 0, heldFrames: 2, oldestPastMatch: 100, oldestAckGated: false }]);
  });

  it('waits at most TRAILING_GRACE times the limit, however steadily the backup trails', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 40; i++) h.p.fromVm(PRIMARY, seg(P, i), 10 * MS);
    // The backup says piece i at 60 + 50 i ms: always progressing, ever further behind the primary.
    let t = 10;
    for (let i = 0; timeouts(h) === 0 && i < 40; i++) {
      t = 60 + 50 * i;
      h.p.fromVm(BACKUP, seg(B, i), t * MS);
      h.p.tick(t * MS);
    }
    expect(timeouts(h)).toBe(1);
    expect(t).toBeGreaterThan(10 + 100 * TRAILING_GRACE);
    expect(t).toBeLessThanOrEqual(10 + 100 * TRAILING_GRACE + 50);
  });

  it('does not count a backup that repeats itself as progress', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, seg(P, 0), 10 * MS);
    h.p.fromVm(PRIMARY, seg(P, 1), 10 * MS);
    h.p.fromVm(BACKUP, seg(B, 0), 20 * MS);
    for (let t = 60; t <= 200; t += 20) {
      h.p.fromVm(BACKUP, seg(B, 0), t * MS); // a retransmission: nothing new
      h.p.tick(t * MS);
    }
    expect(timeouts(h)).toBe(1);
  });
});

describe('ACKs to a trailing backup after an aligning checkpoint (resync align)', () => {
  it('acknowledge only what the backup has sent, so its TCP takes them and it catches up', () => {
    const h = harness({ resync: 'align', maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, seg(P, 0), 10 * MS);
    h.p.fromVm(PRIMARY, seg(P, 1), 10 * MS);
    h.p.fromVm(BACKUP, seg(B, 0), 20 * MS);
    h.p.request('manual', undefined, 30 * MS);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 40 * MS, 5);
    expect(h.out.client.length).toBe(1 + 2); // the aligning checkpoint released the primary's held output
    const nb = h.out.backup.length;
    // The client acknowledges both pieces; the backup has sent only the first.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 201, flags: 'A', window: 10 }), 50 * MS);
    expect(ackOf(h.out.backup[nb])).toBe(B + 101);
    expect(h.p.stageCounters().ingress.backup_acks_clamped).toBe(1);
    // Its window grows by what the ACK lost (100 bytes: one 128-byte unit at scale 7, rounded up), so its
    // send limit stays the client's right edge; the checksum still holds after both rewrites.
    const windowOf = (f: Buffer) => f.readUInt16BE(14 + 20 + 14);
    expect(windowOf(h.out.backup[nb])).toBe(10 + 1);
    expect(l4ChecksumIsValid(h.out.backup[nb])).toBe(true);
    // Once it has sent the second piece, the client's ACK reaches it whole, window as sent.
    h.p.fromVm(BACKUP, seg(B, 1), 60 * MS);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 201, flags: 'A', window: 10 }), 70 * MS);
    expect(ackOf(h.out.backup[nb + 1])).toBe(B + 201);
    expect(windowOf(h.out.backup[nb + 1])).toBe(10);
    expect(h.p.stageCounters().ingress.backup_acks_clamped).toBe(1);
  });

  it('never lowers ACKs with resync copy (the backup is the primary\'s copy)', () => {
    const h = harness({ resync: 'copy' });
    handshake(h);
    h.p.fromVm(PRIMARY, seg(P, 0), 10 * MS);
    h.p.fromVm(PRIMARY, seg(P, 1), 10 * MS);
    h.p.fromVm(BACKUP, seg(B, 0), 20 * MS);
    h.p.request('manual', undefined, 30 * MS);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 40 * MS, 5);
    const nb = h.out.backup.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 201, flags: 'A' }), 50 * MS);
    expect(ackOf(h.out.backup[nb])).toBe(P + 201);
    expect(h.p.stageCounters().ingress.backup_acks_clamped).toBe(0);
  });
});

describe('a trailing backup after an aligning checkpoint (resync align): the storm of issue 9', () => {
  /**
   * The primary is 10 pieces ahead when a checkpoint aligns the stream at its end. The backup then sends
   * its missing pieces one every 50 ms (catching up: below the aligned point, nothing to compare them
   * with) while the primary goes on. Before: those bytes did not count as progress, so each new primary
   * piece timed out 100 ms later, and every checkpoint pushed the aligned point further ahead (lab-bench:
   * one flow, 5 `timeout` checkpoints in a row).
   */
  function catchingUp(backupStopsAt: number) {
    const h = harness({ resync: 'align', maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 10; i++) h.p.fromVm(PRIMARY, seg(P, i), 10 * MS);
    h.p.request('manual', undefined, 20 * MS);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 25 * MS, 5);
    let next = 10;
    for (let t = 30, i = 0; t <= 600; t += 50, i++) {
      if (i < backupStopsAt) h.p.fromVm(BACKUP, seg(B, i), t * MS); // the backup's catching-up, in its own sequence space
      if (t < 300) h.p.fromVm(PRIMARY, seg(P, next++), t * MS); // the primary goes on
      h.p.tick(t * MS);
      h.p.tick((t + 25) * MS);
    }
    return h;
  }

  it('counts the backup\'s catching-up bytes as progress: no timeout while it keeps coming', () => {
    const h = catchingUp(12);
    expect(timeouts(h)).toBe(0);
    expect(h.p.stageCounters().compare.backup_trailing_waits).toBeGreaterThan(0);
  });

  it('still asks for a checkpoint when the catching-up backup stops', () => {
    expect(timeouts(catchingUp(3))).toBeGreaterThanOrEqual(1);
  });
});

describe('a client that resets the connection while the backup trails (issue 9: wrk hanging up on a download)', () => {
  /**
   * wrk closes its connections when its time is up; the servers are mid-response. The client's kernel
   * answers each further segment with a reset. The backup, behind the primary, is reset too (or sits on a
   * window nobody will open again): it never says the rest. Before: the primary's held rest timed out
   * 100 ms later, one `timeout` checkpoint per lab-bench run (captured: primary 5.8-56 KB ahead).
   */
  function hungUp(reset: { seq: number } | null) {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 4; i++) h.p.fromVm(PRIMARY, seg(P, i), 10 * MS);
    h.p.fromVm(BACKUP, seg(B, 0), 12 * MS);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 101, flags: 'FA' }), 15 * MS);
    if (reset) h.p.fromClient(fromClient({ seq: reset.seq, ack: 0, flags: 'R' }), 20 * MS);
    h.p.tick(60 * MS);
    h.p.tick(130 * MS);
    return h;
  }

  it('releases the primary\'s held output without a checkpoint, counted and logged', () => {
    const h = hungUp({ seq: C + 2 });
    expect(timeouts(h)).toBe(0);
    expect(h.out.client).toHaveLength(1 + 4); // SYN-ACK, the matched piece, then the 3 the backup never said
    const c = h.p.stageCounters().compare;
    expect(c.client_reset_releases).toBe(1);
    expect(c.client_reset_frames_released).toBe(3);
    expect(h.logged.filter((l) => l.event === 'client-reset-released').map((l) => l.fields)).toEqual([
      expect.objectContaining({ heldFrames: 3, primaryAheadBytes: 300, releasesSinceLastLine: 1 }),
    ]);
    expect(h.logged.some((l) => l.event === 'backup-late')).toBe(false);
  });

  it('still asks for a checkpoint when the client did not reset', () => {
    const h = hungUp(null);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.client_reset_releases).toBe(0);
  });

  it('does not take a reset the flow refused (far out of window) as the client\'s', () => {
    const h = hungUp({ seq: (C + 1 + 0x40000000) >>> 0 });
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.client_reset_releases).toBe(0);
  });

  it('does not take a reset from long before the held output as an excuse', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    // An in-window reset the replicas ignored (not at the exact sequence number); the flow went on.
    h.p.fromClient(fromClient({ seq: C + 2, ack: 0, flags: 'R' }), 10 * MS);
    h.p.fromVm(PRIMARY, seg(P, 0), 500 * MS);
    h.p.tick(700 * MS);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.client_reset_releases).toBe(0);
  });
});

describe('a client whose full window holds both replicas back (issue 9: rate-limited downloads in the soak)', () => {
  /**
   * A reader slower than the servers: its window fills, and both replicas wait for it to open. They cut
   * their segments at different places, so the primary may stand at the window's edge a few bytes past the
   * backup: those bytes wait in the bridge until the window opens and the backup says them (the soak's
   * downloads at 4 MB/s: `timeout` checkpoints with the primary 16-936 B ahead in one frame, the backup
   * quiet 100-430 ms, while both replicas had paused together for 120 ms).
   */
  const piece = (base: number, at: number, len: number) => fromVm({ seq: base + 1 + at, ack: C + 1, flags: 'PA', payload: 'w'.repeat(len) });
  function stalled(clientWindow: number, primaryPieces = 4) {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h); // window scale 7 both ways: the window field counts 128-byte units
    for (let i = 0; i < primaryPieces; i++) h.p.fromVm(PRIMARY, piece(P, 100 * i, 100), 10 * MS);
    for (let i = 0; i < 3; i++) h.p.fromVm(BACKUP, piece(B, 100 * i, 100), 12 * MS);
    h.p.fromVm(BACKUP, piece(B, 300, 76), 12 * MS); // the backup's last segment ends 24 bytes short
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: clientWindow }), 20 * MS);
    return h;
  }

  it('waits for the window to open and the backup to say the rest, with no timeout', () => {
    const h = stalled(1); // 128 bytes from P+301: the primary, at P+401, is at the edge
    h.p.tick(150 * MS);
    h.p.tick(250 * MS);
    expect(timeouts(h)).toBe(0);
    expect(h.p.stageCounters().compare.window_stalled_waits).toBe(1);
    // The reader opens its window; the limit starts again from there.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: 100 }), 300 * MS);
    h.p.tick(350 * MS);
    expect(timeouts(h)).toBe(0);
    const before = h.out.client.length;
    h.p.fromVm(BACKUP, piece(B, 376, 24), 360 * MS);
    expect(h.out.client.length).toBe(before + 1); // the primary's last piece, matched at last
    h.p.tick(500 * MS);
    expect(timeouts(h)).toBe(0);
  });

  it('asks for a checkpoint when the window is open and the backup stays quiet', () => {
    const h = stalled(100); // 12,800 bytes: nothing holds the backup back
    h.p.tick(150 * MS);
    // The 76 bytes both said go out first (releaseMatchedPrefix), and the backup gets one more limit.
    expect(h.p.stageCounters().compare.prefix_releases).toBe(1);
    expect(timeouts(h)).toBe(0);
    h.p.tick(260 * MS);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.window_stalled_waits).toBe(0);
  });

  it('asks for a checkpoint when more than the last piece is held (a full window is then the hold\'s doing)', () => {
    const h = stalled(1, 20); // the primary 1,700 bytes past what the backup said
    h.p.tick(150 * MS);
    h.p.tick(260 * MS); // one more limit after the 76 bytes' prefix went out
    expect(timeouts(h)).toBe(1);
  });

  it('asks for a checkpoint when the backup is still quiet a limit after the window opened', () => {
    const h = stalled(1);
    h.p.tick(150 * MS);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: 100 }), 300 * MS);
    h.p.tick(390 * MS);
    expect(timeouts(h)).toBe(0);
    h.p.tick(420 * MS);
    expect(timeouts(h)).toBe(1);
  });

  it('counts the window unscaled when the primary\'s SYN-ACK offered no scaling', () => {
    const noWs = { mss: 1460, sackOk: true, ts: [7000, 111] as [number, number] };
    const unscaled = (clientWindow: number) => {
      const h = harness({ maxUnmatchedAgeMs: 100 });
      h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
      h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: noWs }), 2);
      h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: { ...noWs, ts: [99000, 111] } }), 3);
      h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A' }), 4);
      for (let i = 0; i < 4; i++) h.p.fromVm(PRIMARY, piece(P, 100 * i, 100), 10 * MS);
      for (let i = 0; i < 3; i++) h.p.fromVm(BACKUP, piece(B, 100 * i, 100), 12 * MS);
      h.p.fromVm(BACKUP, piece(B, 300, 76), 12 * MS);
      h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: clientWindow }), 20 * MS);
      h.p.tick(150 * MS);
      h.p.tick(260 * MS); // one more limit after the prefix
      return timeouts(h);
    };
    // 3,000 bytes unscaled: open. 100 bytes unscaled: full (scaled by the client's 128 it would be 12,800: open).
    expect(unscaled(3000)).toBe(1);
    expect(unscaled(100)).toBe(0);
  });
});

describe('segments cut at different places at the edge of a nearly full window (the soak\'s timeouts, seen in captures)', () => {
  /**
   * Captured in the soak (4 MB/s downloads, client window scale 10): the client's window had about 1 KiB
   * left. The primary sent [a, a+1024) into it, the backup [a, a+488). Neither could send a full segment
   * into what was left, so each only resent what it had in flight (or sent when its persist timer fired,
   * 200 ms and doubling). The bridge held the primary's segment (only its beginning matched), so the
   * client had nothing new to acknowledge, the backup never heard an ACK for its 488 bytes, and it never
   * said the rest: a `timeout` checkpoint 0.4-1 s later, 20 of them in a soak with a realtime data plane.
   */
  const piece = (base: number, at: number, len: number, fill = 'w') => fromVm({ seq: base + 1 + at, ack: C + 1, flags: 'PA', payload: fill.repeat(len) });
  function cutDifferently() {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h); // window scale 7 both ways
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(PRIMARY, piece(P, 100 * i, 100), 10 * MS);
      h.p.fromVm(BACKUP, piece(B, 100 * i, 100), 11 * MS);
    }
    h.p.fromVm(PRIMARY, piece(P, 300, 200, 'x'), 12 * MS); // the primary's last segment: 200 bytes
    h.p.fromVm(BACKUP, piece(B, 300, 80, 'x'), 13 * MS); // the backup's: the first 80 of them
    // The client acknowledges what it got (300 bytes) and has 256 bytes of window left: both stand at its edge.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: 2 }), 20 * MS);
    return h;
  }

  it('sends the client the matched beginning of the held segment once it has waited the limit: the client acknowledges it and the backup hears that ACK', () => {
    const h = cutDifferently();
    const before = h.out.client.length;
    h.p.tick(90 * MS);
    expect(h.out.client).toHaveLength(before); // within the limit: nothing yet
    h.p.tick(150 * MS);
    expect(h.out.client).toHaveLength(before + 1);
    const prefix = h.out.client[before];
    expect(seqOf(prefix)).toBe(P + 301);
    expect(payloadOf(prefix)).toBe('x'.repeat(80));
    expect(prefix[14 + 20 + 13] & 0x09).toBe(0); // no FIN, no PSH: the rest comes later
    expect(l4ChecksumIsValid(prefix)).toBe(true);
    expect(prefix.readUInt16BE(14 + 2)).toBe(20 + 20 + 80); // IPv4 total length
    const c = h.p.stageCounters().compare;
    expect(c.prefix_releases).toBe(1);
    expect(c.prefix_released_bytes).toBe(80);
    expect(timeouts(h)).toBe(0);
    // Once is enough: nothing new matched, nothing sent again.
    h.p.tick(200 * MS);
    expect(h.out.client).toHaveLength(before + 1);
    // The client acknowledges it; the backup gets that ACK in its own space, whole (it sent those bytes).
    const nb = h.out.backup.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 381, flags: 'A', window: 2 }), 210 * MS);
    expect(ackOf(h.out.backup[nb])).toBe(B + 381);
    // Its persist timer fires: it says the rest, and the primary's segment goes out whole (the client drops the 80 bytes it has).
    h.p.fromVm(BACKUP, piece(B, 380, 120, 'x'), 400 * MS);
    expect(h.out.client).toHaveLength(before + 2);
    expect(seqOf(h.out.client[before + 1])).toBe(P + 301);
    expect(payloadOf(h.out.client[before + 1])).toBe('x'.repeat(200));
    h.p.tick(600 * MS);
    expect(timeouts(h)).toBe(0);
  });

  it('without it (the backup still quiet after the rest of the wait), a checkpoint is asked as before', () => {
    const h = cutDifferently();
    h.p.tick(150 * MS);
    expect(h.p.stageCounters().compare.prefix_releases).toBe(1);
    // The window stays full, the backup says nothing: the stalled-window wait ends at TRAILING_GRACE times the limit.
    for (let t = 200; t <= 100 * TRAILING_GRACE + 100; t += 50) h.p.tick(t * MS);
    expect(timeouts(h)).toBe(1);
  });

  /**
   * Also captured: the backup 104 bytes ahead, resending them after a retransmission timeout (so with a
   * congestion window of one segment: nothing new until they are acknowledged). The primary's next segment
   * covers them and more; then the client opens its window wide and the primary sends a megabyte. Without
   * the prefix the backup stayed quiet 0.5-0.9 s and the flow timed out; with it, the prefix went out in the
   * same tick as the timeout. The backup gets the limit again from the prefix.
   */
  function backupInLoss() {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(PRIMARY, piece(P, 100 * i, 100), 10 * MS);
      h.p.fromVm(BACKUP, piece(B, 100 * i, 100), 11 * MS);
    }
    h.p.fromVm(BACKUP, piece(B, 300, 104, 'x'), 12 * MS); // ahead of the primary
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: 8 }), 20 * MS);
    h.p.fromVm(PRIMARY, piece(P, 300, 1024, 'x'), 100 * MS); // its probe: only the first 104 bytes match
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A', window: 2000 }), 120 * MS); // the reader opens wide
    for (let i = 0; i < 10; i++) h.p.fromVm(PRIMARY, piece(P, 1324 + 1000 * i, 1000, 'x'), 121 * MS);
    return h;
  }

  it('gives a backup the limit again after the prefix went out: it hears the ACK and catches up, no timeout', () => {
    const h = backupInLoss();
    const before = h.out.client.length;
    h.p.tick(210 * MS);
    expect(h.p.stageCounters().compare.prefix_releases).toBe(1);
    expect(payloadOf(h.out.client[before])).toBe('x'.repeat(104));
    expect(timeouts(h)).toBe(0);
    h.p.tick(260 * MS);
    expect(timeouts(h)).toBe(0);
    // The client's ACK for the 104 bytes reaches the backup; it leaves its loss state and sends on.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 405, flags: 'A', window: 2000 }), 262 * MS);
    h.p.fromVm(BACKUP, piece(B, 404, 920 + 5000, 'x'), 280 * MS);
    h.p.tick(330 * MS);
    h.p.tick(370 * MS);
    expect(timeouts(h)).toBe(0);
    expect(h.out.client.length).toBeGreaterThanOrEqual(before + 1 + 6);
  });

  it('asks for a checkpoint when the backup is still quiet a limit after the prefix', () => {
    const h = backupInLoss();
    h.p.tick(210 * MS);
    h.p.tick(300 * MS);
    expect(timeouts(h)).toBe(0);
    h.p.tick(320 * MS);
    expect(timeouts(h)).toBe(1);
  });

  it('sends nothing early when the frame\'s ACK is ahead of what the backup acknowledged (the usual release rule)', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'q'.repeat(50) }), 5 * MS);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 51, flags: 'PA', payload: 'r'.repeat(200) }), 10 * MS);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'r'.repeat(80) }), 11 * MS);
    const before = h.out.client.length;
    h.p.tick(150 * MS);
    expect(h.out.client).toHaveLength(before);
    expect(h.p.stageCounters().compare.prefix_releases).toBe(0);
  });

  it('the primary dies after the beginning went out: the promoted backup\'s backlog starts where the client stands, not before', () => {
    const h = cutDifferently();
    h.p.tick(150 * MS);
    expect(h.p.stageCounters().compare.prefix_releases).toBe(1);
    // The backup says 40 more bytes; the primary dies before the backup says the rest.
    h.p.fromVm(BACKUP, piece(B, 380, 40, 'x'), 160 * MS);
    const before = h.out.client.length;
    expect(h.p.failoverNow('carrier', 'test', 170 * MS)).toBe('promoted');
    const sent = h.out.client.slice(before);
    // The backlog is what the backup said past the 80 bytes the client has: 40 bytes at P+381.
    expect(sent).toHaveLength(1);
    expect(seqOf(sent[0])).toBe(P + 381);
    expect(payloadOf(sent[0])).toBe('x'.repeat(40));
    expect(l4ChecksumIsValid(sent[0])).toBe(true);
  });
});

describe('a new connection on the 4-tuple of one the client reset (port reuse)', () => {
  it('does not inherit the old connection\'s reset: its held output still waits for the backup', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, seg(P, 0), 5 * MS);
    h.p.fromVm(BACKUP, seg(B, 0), 5 * MS);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 101, flags: 'R' }), 10 * MS);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 101, ack: C + 1, flags: 'R' }), 11 * MS);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 101, ack: C + 1, flags: 'R' }), 11 * MS);
    // Same ports, new ISNs, 10 ms later.
    const C2 = 70_000, P2 = 80_000, B2 = 990_000;
    h.p.fromClient(fromClient({ seq: C2, flags: 'S', options: SYN_OPTS }), 20 * MS);
    h.p.fromVm(PRIMARY, fromVm({ seq: P2, ack: C2 + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } }), 21 * MS);
    h.p.fromVm(BACKUP, fromVm({ seq: B2, ack: C2 + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } }), 21 * MS);
    h.p.fromClient(fromClient({ seq: C2 + 1, ack: P2 + 1, flags: 'A' }), 22 * MS);
    h.p.fromVm(PRIMARY, fromVm({ seq: P2 + 1, ack: C2 + 1, flags: 'PA', payload: 'n'.repeat(100) }), 25 * MS);
    h.p.tick(130 * MS);
    expect(h.p.stageCounters().compare.client_reset_releases).toBe(0);
    expect(timeouts(h)).toBe(1);
  });
});

describe('a backup that lost a segment before the bridge', () => {
  it('times out (only its retransmission timer resends the segment), and backup-late says how much waits beyond the gap', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 4; i++) h.p.fromVm(PRIMARY, seg(P, i), 10 * MS);
    for (const i of [0, 2, 3]) h.p.fromVm(BACKUP, seg(B, i), 11 * MS); // piece 1 lost
    h.p.tick(150 * MS);
    expect(timeouts(h)).toBe(1);
    const late = h.logged.filter((l) => l.event === 'backup-late').map((l) => l.fields);
    expect(late).toEqual([expect.objectContaining({ backupBeyondGap: 2 })]);
    expect(late[0]).not.toHaveProperty('primaryBeyondGap');
  });
});

describe('a server that paces its output by the clock (nginx limit_rate)', () => {
  /**
   * The primary sends a piece, the client acknowledges it, and the primary stays quiet 600 ms with the window
   * open and nothing to answer before the next: a server that paces its output (nginx limit_rate sleeps after
   * each chunk). Its backup, whose chunks and timers fall a little differently, may say a piece up to a sleep
   * later than the primary (the paced-server integration test: 1-6 timeouts a round before).
   */
  const piece = (base: number, i: number) => fromVm({ seq: base + 1 + 100 * i, ack: C + 1, flags: 'PA', payload: String.fromCharCode(97 + i).repeat(100) });
  const ackTo = (i: number, t: number, window = 100) => fromClient({ seq: C + 1, ack: P + 1 + 100 * (i + 1), flags: 'A', window });
  function paced(requestBetween: boolean) {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, piece(P, 0), 10 * MS);
    h.p.fromVm(BACKUP, piece(B, 0), 12 * MS);
    h.p.fromClient(ackTo(0, 14), 14 * MS);
    // A client that sends data (a request) before each piece: the primary's silence was waiting for it.
    if (requestBetween) h.p.fromClient(fromClient({ seq: C + 1, ack: P + 101, flags: 'PA', payload: 'next' }), 600 * MS);
    h.p.fromVm(PRIMARY, piece(P, 1), 610 * MS);
    h.p.fromVm(BACKUP, piece(B, 1), 615 * MS);
    h.p.fromClient(ackTo(1, 617), 617 * MS);
    if (requestBetween) h.p.fromClient(fromClient({ seq: C + 5, ack: P + 201, flags: 'PA', payload: 'next' }), 1200 * MS);
    // The backup says the next piece 650 ms after the primary.
    h.p.fromVm(PRIMARY, piece(P, 2), 1210 * MS);
    for (const t of [1320, 1600, 1800]) h.p.tick(t * MS);
    return h;
  }

  it('once the primary has paused of its own accord for a quarter of the limit, waits up to PACED_GRACE times the limit for its backup', () => {
    const h = paced(false);
    expect(timeouts(h)).toBe(0);
    expect(h.p.stageCounters().compare.paced_waits).toBe(1);
    const before = h.out.client.length;
    h.p.fromVm(BACKUP, piece(B, 2), 1860 * MS);
    expect(h.out.client.length).toBe(before + 1); // matched at last, and released
    // The next piece; a backup quiet for longer than PACED_GRACE times the limit: it times out.
    h.p.fromVm(PRIMARY, piece(P, 3), 1870 * MS);
    h.p.tick((1870 + 100 * PACED_GRACE - 10) * MS);
    expect(timeouts(h)).toBe(0);
    h.p.tick((1870 + 100 * PACED_GRACE + 10) * MS);
    expect(timeouts(h)).toBe(1);
    const late = h.logged.filter((l) => l.event === 'backup-late').map((l) => l.fields);
    expect(late).toEqual([expect.objectContaining({ heldMs: 100 * PACED_GRACE + 10, primaryPauseMs: 596 })]);
  });

  /**
   * After the pieces of `paced(false)`, the primary sends four pieces at once (nginx sends what the seconds allow,
   * up to 2 MiB, in one go) and the backup says them one by one, 1.5 s apart (it sends the same piece by piece).
   */
  function trickling() {
    const h = paced(false);
    h.p.fromVm(BACKUP, piece(B, 2), 1860 * MS);
    h.p.fromClient(ackTo(2, 1862), 1862 * MS);
    for (let i = 3; i < 7; i++) h.p.fromVm(PRIMARY, piece(P, i), 1870 * MS);
    const sayNext = (i: number, t: number) => {
      h.p.fromVm(BACKUP, piece(B, i), t * MS);
      h.p.fromClient(ackTo(i, t + 2), (t + 2) * MS);
    };
    return { h, sayNext };
  }

  it('waits for a paced backup that keeps saying more past PACED_GRACE times the limit, up to PACED_MAX_AGE times', () => {
    const { h, sayNext } = trickling();
    sayNext(3, 3370);
    h.p.tick((1870 + 100 * PACED_GRACE + 10) * MS); // piece 4 held past the grace, but the backup spoke 510 ms ago
    expect(timeouts(h)).toBe(0);
    sayNext(4, 4870);
    h.p.tick(5000 * MS);
    sayNext(5, 6370);
    h.p.tick((1870 + 100 * PACED_MAX_AGE - 10) * MS);
    expect(timeouts(h)).toBe(0);
    expect(h.out.client.length).toBeGreaterThanOrEqual(6); // pieces 0-5 compared and released
    h.p.tick((1870 + 100 * PACED_MAX_AGE + 10) * MS); // piece 6 has waited PACED_MAX_AGE times the limit
    expect(timeouts(h)).toBe(1);
  });

  it('times out a paced backup that stops saying more PACED_GRACE times the limit after its last new bytes', () => {
    const { h, sayNext } = trickling();
    sayNext(3, 3370);
    h.p.tick((3370 + 100 * PACED_GRACE - 10) * MS);
    expect(timeouts(h)).toBe(0);
    h.p.tick((3370 + 100 * PACED_GRACE + 10) * MS);
    expect(timeouts(h)).toBe(1);
  });

  it('does not count the time the primary waited for the client\'s data as a pause: the limit applies', () => {
    const h = paced(true);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.paced_waits).toBe(0);
  });

  it('does not count the time the primary waited for ACKs (nothing acknowledged yet): the limit applies', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, piece(P, 0), 10 * MS);
    h.p.fromVm(BACKUP, piece(B, 0), 12 * MS);
    // No ACK for 600 ms (a long round trip); the primary goes on as soon as it comes.
    h.p.fromClient(ackTo(0, 610), 610 * MS);
    h.p.fromVm(PRIMARY, piece(P, 1), 611 * MS);
    for (const t of [720, 900]) h.p.tick(t * MS);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.paced_waits).toBe(0);
  });

  it('does not take quiet spells shorter than a quarter of the limit as pacing: the limit applies', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(PRIMARY, piece(P, i), (10 + 30 * i) * MS);
      h.p.fromVm(BACKUP, piece(B, i), (11 + 30 * i) * MS);
      h.p.fromClient(ackTo(i, 0), (16 + 30 * i) * MS); // then 24 ms quiet
    }
    h.p.fromVm(PRIMARY, piece(P, 3), 100 * MS);
    for (const t of [210, 400]) h.p.tick(t * MS);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.paced_waits).toBe(0);
  });

  it('does not count a pause that the client\'s full window imposed (a slow reader): the limit applies', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h); // window scale 7: the window field counts 128-byte units
    h.p.fromVm(PRIMARY, piece(P, 0), 10 * MS);
    h.p.fromVm(BACKUP, piece(B, 0), 12 * MS);
    // The client acknowledges all, with a window that ends where the primary stands: both wait for the reader.
    h.p.fromClient(ackTo(0, 20, 0), 20 * MS);
    // 600 ms later it reads, opens the window, and the primary goes on at once.
    h.p.fromClient(ackTo(0, 620, 100), 620 * MS);
    h.p.fromVm(PRIMARY, piece(P, 1), 621 * MS);
    for (const t of [730, 900]) h.p.tick(t * MS);
    expect(timeouts(h)).toBe(1);
    expect(h.p.stageCounters().compare.paced_waits).toBe(0);
  });
});
