/**
 * The data plane's shard function and the classic BPF filter that carries it
 * into the kernel: the program, run by an interpreter with the kernel's
 * semantics, accepts exactly the frames shardOf assigns to its worker. The
 * netns test (test/integration/shard-filter.test.ts) checks the kernel agrees.
 */
import { MAX_SHARDS, ShardError, runFilter, shardFilter, shardOf } from '../../../lib/dataplane/shard';
import { arpFrame, ipv4Fragment, ipv6WithExtensions, tcpFrame, udpFrame, udpSegment } from '../../support/frames';

/** A deterministic stream of numbers in [0, 1). */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function sampleFrames(n: number, seed: number): Buffer[] {
  const rnd = seeded(seed);
  const int = (max: number) => Math.floor(rnd() * max);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const sport = 1024 + int(60000), dport = [80, 443, 53, 21][int(4)];
    const vlan = int(4) === 0 ? [int(4000) + 1] : int(8) === 0 ? [100, 200] : undefined;
    const v4 = `10.${int(256)}.${int(256)}.${int(256)}`;
    switch (int(7)) {
      case 0: out.push(tcpFrame({ sport, dport, vlan, src: v4 })); break;
      case 1: out.push(udpFrame({ sport, dport, vlan })); break;
      case 2: out.push(tcpFrame({ v6: true, sport, dport, vlan, src: `fd77::${int(65535).toString(16)}` })); break;
      case 3: out.push(udpFrame({ v6: true, sport, dport })); break;
      case 4: out.push(ipv4Fragment({ offset: 8 * int(3), more: int(2) === 0, data: udpSegment({ sport, dport, payload: 'x'.repeat(40) }).subarray(0, 24), vlan })); break;
      case 5: out.push(ipv6WithExtensions({ extensions: [{ kind: 'hop-by-hop' }], sport, dport })); break;
      default: out.push(arpFrame({ vlan })); break;
    }
  }
  return out;
}

describe('shardFilter', () => {
  it('accepts in worker i exactly the frames shardOf gives to i, for 2, 3, 4 and 16 workers', () => {
    const frames = sampleFrames(600, 7);
    for (const count of [2, 3, 4, 16]) {
      const programs = Array.from({ length: count }, (_, i) => shardFilter(count, i));
      for (const f of frames) {
        const takers = programs.map((p, i) => (runFilter(p, f) !== 0 ? i : -1)).filter((i) => i >= 0);
        expect(takers).toEqual([shardOf(f, count)]);
      }
    }
  });

  it('accepts the whole frame (snap length all ones), and drops with 0', () => {
    const f = tcpFrame({ sport: 40000, dport: 80 });
    const mine = shardOf(f, 2);
    expect(runFilter(shardFilter(2, mine), f)).toBe(0xffffffff);
    expect(runFilter(shardFilter(2, 1 - mine), f)).toBe(0);
  });

  it('drops a frame too short to read in every worker, as the kernel does (a load past the end)', () => {
    const f = tcpFrame({ sport: 40000, dport: 80 }).subarray(0, 30);
    expect(shardOf(f, 2)).toBe(-1);
    for (const i of [0, 1]) expect(runFilter(shardFilter(2, i), f)).toBe(0);
    expect(runFilter(shardFilter(2, 0), Buffer.alloc(10))).toBe(0);
  });

  it('refuses counts and indexes it cannot serve', () => {
    expect(() => shardFilter(1, 0)).toThrow(ShardError);
    expect(() => shardFilter(MAX_SHARDS + 1, 0)).toThrow(ShardError);
    expect(() => shardFilter(4, 4)).toThrow(ShardError);
    expect(() => shardFilter(4, -1)).toThrow(ShardError);
    expect(() => shardFilter(2.5, 0)).toThrow(ShardError);
  });
});

describe('shardOf', () => {
  it('puts both directions of a flow in one worker (client to VM and back, IPv4 and IPv6, tagged or not)', () => {
    const rnd = seeded(3);
    for (let i = 0; i < 300; i++) {
      const sport = 1024 + Math.floor(rnd() * 60000);
      const v6 = i % 2 === 1;
      const vlan = i % 3 === 0 ? [7] : undefined;
      const there = tcpFrame({ v6, sport, dport: 80, vlan });
      const back = tcpFrame({ v6, from: 'vm', sport: 80, dport: sport, vlan, flags: 'SA' });
      for (const count of [2, 4, 7]) expect(shardOf(back, count)).toBe(shardOf(there, count));
    }
  });

  it('does not depend on what differs between the replicas\' answers (sequence numbers, IP ID, TTL, payload, tag present or stripped)', () => {
    const a = tcpFrame({ from: 'vm', sport: 80, dport: 41000, seq: 1, ipId: 1, ttl: 64, payload: 'primary' });
    const b = tcpFrame({ from: 'vm', sport: 80, dport: 41000, seq: 99999, ipId: 777, ttl: 63, payload: 'backup!', vlan: [12] });
    for (const count of [2, 3, 8]) expect(shardOf(b, count)).toBe(shardOf(a, count));
  });

  it('finds the same flow behind two tags, one (the kernel moved the outer one out) or none', () => {
    const plain = tcpFrame({ sport: 45678, dport: 80 });
    for (const count of [2, 3, 5, 16]) {
      expect(shardOf(tcpFrame({ sport: 45678, dport: 80, vlan: [200] }), count)).toBe(shardOf(plain, count));
      expect(shardOf(tcpFrame({ sport: 45678, dport: 80, vlan: [100, 200] }), count)).toBe(shardOf(plain, count));
    }
  });

  it('keeps every fragment of a datagram in one worker (addresses only)', () => {
    const seg = udpSegment({ sport: 5353, dport: 53, payload: 'y'.repeat(64) });
    const first = ipv4Fragment({ offset: 0, more: true, data: seg.subarray(0, 32) });
    const rest = ipv4Fragment({ offset: 32, more: false, data: seg.subarray(32) });
    for (const count of [2, 5]) expect(shardOf(rest, count)).toBe(shardOf(first, count));
  });

  it('spreads one client\'s connections to one server across the workers', () => {
    const counts = [0, 0];
    for (let sport = 40000; sport < 41000; sport++) counts[shardOf(tcpFrame({ sport, dport: 80 }), 2)]++;
    // Evenly enough that a second worker is worth having: each takes 40-60%.
    expect(Math.min(...counts)).toBeGreaterThanOrEqual(400);
  });

  it('gives frames that are not IP to worker 0', () => {
    expect(shardOf(arpFrame({}), 4)).toBe(0);
    expect(shardOf(tcpFrame({ sport: 1, dport: 2 }), 1)).toBe(0);
  });
});
