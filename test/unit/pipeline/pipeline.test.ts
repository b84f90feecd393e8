import { ShadowPipeline, makePipelineConfig, PipelineConfig } from '../../../lib/pipeline';
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { arpFrame, l4ChecksumIsValid, udpFrame, macBytes, VM_MAC } from '../../support/frames';
import { B, C, P, SYN_OPTS, ackOf, fromClient, fromVm, handshake, harness, seqOf } from '../../support/pipeline-harness';

describe('ShadowPipeline', () => {
  it('releases the primary SYN-ACK only after the backup answered the same SYN', () => {
    const h = harness();
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    expect(h.out.primary).toHaveLength(1);
    expect(h.out.backup).toHaveLength(1);
    h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    expect(h.out.client).toHaveLength(0);
    h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 3);
    expect(h.out.client).toHaveLength(1);
    expect(seqOf(h.out.client[0])).toBe(P); // the primary's frame, untouched
  });

  it('translates client ACKs, SACK blocks and TS echoes into the backup sequence space', () => {
    const h = harness();
    handshake(h);
    const ack = h.out.backup[1];
    expect(ackOf(h.out.primary[1])).toBe(P + 1);
    expect(ackOf(ack)).toBe(B + 1);
    expect(l4ChecksumIsValid(ack)).toBe(true);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, options: { sack: [[P + 101, P + 201]], ts: [222, 7005] } }), 10);
    const sackFrame = h.out.backup[2];
    expect(l4ChecksumIsValid(sackFrame)).toBe(true);
    expect(sackFrame.includes(Buffer.from([(B + 101) >>> 24, ((B + 101) >>> 16) & 0xff, ((B + 101) >>> 8) & 0xff, (B + 101) & 0xff]))).toBe(true);
    const tsEcr = 99000 + 5; // 7005 in the primary's TS space is 99005 in the backup's
    const ecr = Buffer.alloc(4);
    ecr.writeUInt32BE(tsEcr);
    expect(sackFrame.includes(ecr)).toBe(true);
  });

  it('holds client ACKs until the backup SYN-ACK gives the backup ISN, then sends them translated', () => {
    const h = harness();
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1 }), 3);
    expect(h.out.backup).toHaveLength(1); // only the SYN
    h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 4);
    expect(h.out.backup).toHaveLength(2);
    expect(ackOf(h.out.backup[1])).toBe(B + 1);
  });

  it('releases primary bytes only after the backup has sent the same bytes, whatever the segmentation', () => {
    const h = harness();
    handshake(h);
    const released = h.out.client.length;
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'HTTP/1.1 200 OK\r\n' }), 10);
    expect(h.out.client).toHaveLength(released);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'A', payload: 'HTTP/1.1 ' }), 11);
    expect(h.out.client).toHaveLength(released);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 10, ack: C + 1, flags: 'PA', payload: '200 OK\r\n' }), 12);
    expect(h.out.client).toHaveLength(released + 1);
    expect(h.out.client[released].toString('latin1')).toContain('HTTP/1.1 200 OK');
  });

  it('never releases a primary ACK ahead of what the backup has acknowledged', () => {
    const h = harness();
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET / HTTP/1.1\r\n\r\n' }), 5);
    const n = h.out.client.length;
    // The primary acknowledges the request; the backup has not yet.
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 19, flags: 'A' }), 6);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'A' }), 7);
    expect(h.out.client).toHaveLength(n);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 19, flags: 'A' }), 8);
    expect(h.out.client).toHaveLength(n + 1);
    expect(ackOf(h.out.client[n])).toBe(C + 19);
  });

  it('never lets a backup frame reach the client', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'only the backup says this' }), 10);
    h.p.fromVm(BACKUP, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'dns' }), 11);
    for (const f of h.out.client) expect(seqOf(f) === B + 1).toBe(false);
    expect(h.out.client.every((f) => !f.includes(Buffer.from('only the backup')))).toBe(true);
    expect(h.p.backupFramesSuppressed).toBeGreaterThanOrEqual(2);
  });

  it('asks for a checkpoint on a mismatch, holds client ingress until it is done, then releases and compares afresh', () => {
    const h = harness({ resync: 'copy' });
    handshake(h);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'port 30001' }), 10);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'port 30777' }), 11);
    expect(h.out.checkpoints).toEqual([expect.objectContaining({ reason: 'mismatch', flow: 'tcp 10.77.0.1:40000 > 10.77.0.2:80' })]);
    expect(h.p.state).toBe('CHECKPOINTING');
    const [released, toPrimary, toBackup] = [h.out.client.length, h.out.primary.length, h.out.backup.length];
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 11, flags: 'A' }), 12);
    expect([h.out.primary.length, h.out.backup.length]).toEqual([toPrimary, toBackup]); // held
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 20);
    expect(h.p.state).toBe('COMPARING');
    expect(h.out.client.length).toBe(released + 1); // the held primary output
    // The backup is now a copy of the primary: same sequence space, client ACKs pass as they are.
    expect(ackOf(h.out.backup[h.out.backup.length - 1])).toBe(P + 11);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 11, ack: C + 1, flags: 'PA', payload: 'next' }), 21);
    h.p.fromVm(BACKUP, fromVm({ seq: P + 11, ack: C + 1, flags: 'PA', payload: 'next' }), 22);
    expect(h.out.client.length).toBe(released + 2);
    expect(h.p.reports[0].mismatches).toBe(1);
  });

  it.each(['copy', 'align'] as const)('goes on comparing a connection that kept talking during a checkpoint (resync %s)', (resync) => {
    const h = harness({ resync });
    handshake(h);
    h.p.request('manual', undefined, 5);
    // Both replicas answer a request while the checkpoint runs (nothing pauses them in a lab).
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'during' }), 6);
    h.p.fromVm(BACKUP, fromVm({ seq: resync === 'copy' ? P + 1 : B + 1, ack: C + 1, flags: 'PA', payload: 'during' }), 7);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 8);
    const n = h.out.client.length;
    const bseq = resync === 'copy' ? P + 7 : B + 7;
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 7, ack: C + 1, flags: 'PA', payload: 'after' }), 9);
    h.p.fromVm(BACKUP, fromVm({ seq: bseq, ack: C + 1, flags: 'PA', payload: 'after' }), 10);
    expect(h.out.client.length).toBe(n + 1);
    h.p.tick(1_000_000);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['manual']);
  });

  it('asks for a checkpoint with reason timeout when a primary byte stays unmatched too long', () => {
    const h = harness({ maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'x' }), 1000);
    h.p.tick(100_000);
    expect(h.out.checkpoints).toHaveLength(0);
    h.p.tick(101_001);
    expect(h.out.checkpoints).toEqual([expect.objectContaining({ reason: 'timeout', flow: 'tcp 10.77.0.1:40000 > 10.77.0.2:80' })]);
  });

  it('asks for a checkpoint with reason queue when a flow holds more than its high-water mark', () => {
    const h = harness({ flowHighWater: { bytes: 1 << 20, frames: 3 } });
    handshake(h);
    for (let i = 0; i < 4; i++) h.p.fromVm(PRIMARY, fromVm({ seq: P + 1 + i, ack: C + 1, flags: 'PA', payload: 'y' }), 10 + i);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['queue']);
  });

  it('lets the primary output flow unchecked when no agent is connected, and says so', () => {
    const h = harness({}, false);
    expect(h.p.state).toBe('DEGRADED');
    expect(h.logs).toContain('degraded');
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'unchecked' }), 1);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'stale' }), 2);
    expect(h.out.client).toHaveLength(1);
    expect(h.p.policyActions['degraded/forward-primary']).toBe(1);
  });

  it('compares UDP datagrams one by one, ignoring IP ID and TTL, with a window of 1', () => {
    const h = harness({ compare: { datagramWindow: 1 } });
    h.p.fromVm(PRIMARY, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer-1', ipId: 1, ttl: 64 }), 1);
    h.p.fromVm(BACKUP, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer-1', ipId: 999, ttl: 63 }), 2);
    expect(h.out.client).toHaveLength(1);
    h.p.fromVm(PRIMARY, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer-2' }), 3);
    h.p.fromVm(BACKUP, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer-X' }), 4);
    expect(h.out.client).toHaveLength(1);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(h.p.reports[0].mismatchList[0]).toMatchObject({ kind: 'datagram', offset: 7 });
  });

  const dns = (payload: string) => udpFrame({ from: 'vm', sport: 53, dport: 5353, payload });
  const texts = (frames: Buffer[]) => frames.map((f) => f.subarray(14 + 20 + 8).toString('latin1'));

  it('releases UDP answers the backup sent in another order, in the primary order, and counts the reordering', () => {
    const h = harness();
    h.p.fromVm(PRIMARY, dns('answer A'), 1);
    h.p.fromVm(PRIMARY, dns('answer B'), 2);
    h.p.fromVm(BACKUP, dns('answer B'), 3);
    expect(h.out.client).toHaveLength(0); // B is confirmed but does not overtake A
    h.p.fromVm(BACKUP, dns('answer A'), 4);
    expect(texts(h.out.client)).toEqual(['answer A', 'answer B']);
    expect(h.out.checkpoints).toEqual([]);
    expect(h.p.stageCounters().compare).toMatchObject({ datagrams_reordered: 2, mismatches: 0 });
  });

  it('calls a UDP answer with no equal within the window a datagram-window mismatch and checkpoints', () => {
    const h = harness({ compare: { datagramWindow: 2 } });
    h.p.fromVm(PRIMARY, dns('answer A'), 1);
    h.p.fromVm(BACKUP, dns('answer X'), 2);
    expect(h.out.checkpoints).toEqual([]);
    h.p.fromVm(BACKUP, dns('answer Y'), 3);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(h.p.reports[0].mismatchList[0]).toMatchObject({ kind: 'datagram-window', offset: 7 });
    expect(h.p.stageCounters().compare).toMatchObject({ mismatches_datagram_window: 1 });
    expect(h.out.client).toHaveLength(0);
  });

  it('reports a UDP answer the backup never repeated as a mismatch once it has waited maxUnmatchedAgeMs', () => {
    const h = harness({ maxUnmatchedAgeMs: 5 });
    h.p.fromVm(PRIMARY, dns('answer A'), 1000);
    h.p.fromVm(BACKUP, dns('answer Z'), 1100);
    h.p.tick(3000);
    expect(h.out.checkpoints).toEqual([]);
    h.p.tick(7000);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(h.p.reports[0].mismatchList[0]).toMatchObject({ kind: 'datagram-window', primary: '"answer A"', backup: '"answer Z"' });
  });

  it('asks for a timeout checkpoint, not a mismatch, when only the backup is late with a UDP answer', () => {
    const h = harness({ maxUnmatchedAgeMs: 5 });
    h.p.fromVm(PRIMARY, dns('answer A'), 1000);
    h.p.tick(7000);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['timeout']);
    expect(h.p.reports[0].mismatches).toBe(0);
  });

  it('applies the ARP policy and counts what it did', () => {
    const arp = arpFrame({ srcMac: VM_MAC });
    const fwd = harness({ policy: { arp: 'forward-primary' } as PipelineConfig['policy'] });
    fwd.p.fromVm(PRIMARY, arp, 1);
    fwd.p.fromVm(BACKUP, arp, 2);
    expect(fwd.out.client).toHaveLength(1);
    expect(fwd.p.policyActions['arp/forward-primary']).toBe(2);

    const drop = harness({ policy: { arp: 'drop' } as PipelineConfig['policy'] });
    drop.p.fromVm(PRIMARY, arp, 1);
    expect(drop.out.client).toHaveLength(0);
    expect(drop.p.policyActions['arp/drop']).toBe(1);

    const cmp = harness({ policy: { arp: 'compare' } as PipelineConfig['policy'] });
    cmp.p.fromVm(PRIMARY, arp, 1);
    expect(cmp.out.client).toHaveLength(0);
    cmp.p.fromVm(BACKUP, arp, 2);
    expect(cmp.out.client).toHaveLength(1);
    expect(macBytes(VM_MAC).equals(cmp.out.client[0].subarray(6, 12))).toBe(true);
  });

  it('counts malformed VM frames by reason and side, drops them and keeps going', () => {
    const h = harness();
    const good = fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS });
    h.p.fromVm(PRIMARY, good.subarray(0, 30), 1);
    h.p.fromVm(BACKUP, good.subarray(0, 13), 2);
    expect(h.p.malformed['truncated-ipv4']).toEqual({ client: 0, primary: 1, backup: 0 });
    expect(h.p.malformed['truncated-ethernet']).toEqual({ client: 0, primary: 0, backup: 1 });
    expect(h.out.client).toHaveLength(0);
    handshake(h, 10);
    expect(h.out.client.length).toBeGreaterThan(0);
  });

  it('learns the ISNs of a connection the VM opened and translates the remote SYN-ACK for the backup', () => {
    const h = harness();
    // The VM connects out (FTP active mode): port 20 → client port 50000.
    const vmSyn = (isn: number) => fromVm({ sport: 20, dport: 50000, seq: isn, flags: 'S', options: SYN_OPTS });
    h.p.fromVm(PRIMARY, vmSyn(P), 1);
    h.p.fromVm(BACKUP, vmSyn(B), 2);
    expect(h.out.client).toHaveLength(1);
    h.p.fromClient(fromClient({ sport: 50000, dport: 20, seq: C, ack: P + 1, flags: 'SA', options: SYN_OPTS }), 3);
    expect(ackOf(h.out.primary[0])).toBe(P + 1);
    expect(ackOf(h.out.backup[0])).toBe(B + 1);
  });
});

describe('ShadowPipeline with offloads', () => {
  it('compares a 64 KiB GSO super-frame from the primary with the backup\'s MSS-sized segments', () => {
    const h = harness();
    handshake(h);
    const body = Buffer.alloc(65000);
    for (let i = 0; i < body.length; i++) body[i] = (i * 7 + 3) & 0xff;
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: body }), 10);
    const n = h.out.client.length;
    for (let off = 0; off < body.length; off += 1448) {
      h.p.fromVm(BACKUP, fromVm({ seq: B + 1 + off, ack: C + 1, flags: 'A', payload: body.subarray(off, off + 1448) }), 11);
      if (off + 1448 < body.length) expect(h.out.client.length).toBe(n);
    }
    expect(h.out.client.length).toBe(n + 1);
    expect(h.out.client[n].length).toBeGreaterThan(65000);
    expect(h.p.reports[0]).toMatchObject({ mismatches: 0, matchedBytes: 65000 });
  });

  it('asks for a checkpoint with reason queue when all flows together hold more than the total high-water mark', () => {
    const h = harness({ totalHighWater: { bytes: 1 << 30, frames: 5 } });
    for (let port = 1; port <= 3; port++) {
      h.p.fromVm(PRIMARY, fromVm({ sport: 80, dport: 40000 + port, seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), port);
      h.p.fromVm(PRIMARY, fromVm({ sport: 80, dport: 40000 + port, seq: P + 1, ack: C + 1, flags: 'PA', payload: 'z' }), port);
    }
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['queue']);
  });
});

describe('ShadowPipeline with virtio-net headers', () => {
  const partial = { flags: 1, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 34, csumOffset: 16 };

  it('leaves a partial checksum alone when it translates a client frame, and passes the header on', () => {
    const sent: { frame: Buffer; vnet: unknown }[] = [];
    const p = new ShadowPipeline(makePipelineConfig(), {
      toReplica: (slot, f, vnet) => { if (slot === 1) sent.push({ frame: Buffer.from(f), vnet }); }, toClient: () => {},
      sendCheckpoint: () => {}, log: () => {},
    }, 0, true);
    p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 3);
    p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A', checksum: 0x1234 }), 4, partial);
    const last = sent[sent.length - 1];
    expect(ackOf(last.frame)).toBe(B + 1);
    expect(last.frame.readUInt16BE(14 + 20 + 16)).toBe(0x1234); // only the pseudo-header sum: untouched
    expect(last.vnet).toBe(partial);
  });

  it('releases a held primary frame with the header it came with', () => {
    const released: unknown[] = [];
    const p = new ShadowPipeline(makePipelineConfig(), {
      toReplica: () => {}, toClient: (_f, vnet) => released.push(vnet),
      sendCheckpoint: () => {}, log: () => {},
    }, 0, true);
    const gso = { flags: 1, gsoType: 1, hdrLen: 66, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 1, gso);
    p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    expect(released).toEqual([gso]);
  });
});
