/**
 * The data plane's shard function and the classic BPF filter that carries it
 * into the kernel: the program, run by an interpreter with the kernel's
 * semantics, accepts exactly the frames shardOf assigns to its worker. The
 * netns test (test/integration/shard-filter.test.ts) checks the kernel agrees.
 * andFilters, a worker's shard and a split ring's length class in one
 * program, accepts exactly what both accept (test/integration/shard-ports.test.ts
 * in the kernel).
 */
import { andFilters, BPF_MAXINSNS, BpfProgram, MAX_SHARDS, ShardError, runFilter, shardFilter, shardOf } from '../../../lib/dataplane/shard';
import { lengthFilter, SMALL_FRAME_MAX, splitBound } from '../../../lib/io/split-ring-port';
import { arpFrame, flowFrame, icmpEcho, icmpFrame, ipv4Fragment, ipv6WithExtensions, randomFlow, tcpFrame, udpFrame, udpSegment } from '../../support/frames';
import { seededRandom } from '../../support/random';

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
    switch (int(10)) {
      case 7: out.push(icmpEcho({ id: int(65536), seq: int(65536), reply: int(2) === 0, vlan, src: v4 })); break;
      case 8: out.push(icmpEcho({ v6: true, id: int(65536), reply: int(2) === 0 })); break;
      case 9: out.push(int(2) === 0 ? icmpFrame({ type: 3, code: 1, body: 'unreachable', src: v4 }) : icmpEcho({ id: int(65536) }).subarray(0, 14 + 20 + 6)); break;
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
        // Cut short inside what the hash reads (an echo's identifier): no worker, in both.
        const w = shardOf(f, count);
        expect(takers).toEqual(w < 0 ? [] : [w]);
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

  it('spreads connections whose ports Linux picked in a row (even ports: connect() prefers them) across the workers', () => {
    for (const count of [2, 3, 4]) {
      const counts = new Array<number>(count).fill(0);
      let run = 0, longest = 0, last = -1;
      for (let sport = 40000; sport < 42000; sport += 2) {
        const w = shardOf(tcpFrame({ sport, dport: 80 }), count);
        counts[w]++;
        run = w === last ? run + 1 : 1;
        last = w;
        longest = Math.max(longest, run);
      }
      // Each worker takes its share (±35%), and no long streak of connections lands on one worker.
      expect(Math.min(...counts)).toBeGreaterThanOrEqual((1000 / count) * 0.65);
      expect(longest).toBeLessThanOrEqual(12);
    }
  });

  it('puts an echo request and its reply in one worker, by their identifier (IPv4 and IPv6), and spreads identifiers', () => {
    for (const v6 of [false, true]) {
      const counts = [0, 0, 0];
      for (let id = 0; id < 3000; id += 7) {
        const request = v6 ? icmpEcho({ v6, id, seq: id * 3 }) : icmpEcho({ id, seq: id * 3, src: '10.1.2.3', dst: '10.9.8.7' });
        const reply = v6 ? icmpEcho({ v6, id, seq: 1, reply: true, src: 'fd77::2', dst: 'fd77::1' }) : icmpEcho({ id, seq: 1, reply: true, src: '10.9.8.7', dst: '10.1.2.3' });
        const w = shardOf(request, 3);
        expect(shardOf(reply, 3)).toBe(w);
        counts[w]++;
      }
      expect(Math.min(...counts)).toBeGreaterThan(100);
    }
  });

  it('gives frames that are not IP to worker 0', () => {
    expect(shardOf(arpFrame({}), 4)).toBe(0);
    expect(shardOf(tcpFrame({ sport: 1, dport: 2 }), 1)).toBe(0);
  });
});

/** Frames of random flows at every length class the split rings tell apart, and frames cut short inside their headers. */
function framesAroundBounds(n: number, seed: number): Buffer[] {
  const random = seededRandom(seed);
  const bounds = [SMALL_FRAME_MAX, splitBound(9000)];
  const out: Buffer[] = [arpFrame({}), Buffer.alloc(0), Buffer.alloc(13)];
  for (let i = 0; i < n; i++) {
    const flow = randomFlow(random);
    const bound = bounds[i % 2];
    // A third at the bound (± 3 bytes), a third anywhere up to a super-frame, a third cut short.
    const kind = i % 3;
    const length = kind === 0 ? bound - 3 + Math.floor(random() * 7) : 100 + Math.floor(random() * 20_000);
    const frame = flowFrame(flow, length, `frame ${i}`);
    out.push(kind === 2 ? frame.subarray(0, Math.floor(random() * 80)) : frame);
  }
  return out;
}

const accepts = (program: Buffer, frame: Uint8Array) => runFilter(program, frame) !== 0;

describe('andFilters', () => {
  const frames = framesAroundBounds(900, 11);

  it('accepts a frame exactly when the shard filter and the length filter both do, for every worker of 2, 3 and 4 and both rings', () => {
    const wrong: string[] = [];
    for (const bound of [SMALL_FRAME_MAX, splitBound(9000)]) {
      for (const count of [2, 3, 4]) {
        for (let index = 0; index < count; index++) {
          const shard = shardFilter(count, index);
          for (const large of [false, true]) {
            const length = lengthFilter(bound, large);
            const both = andFilters(shard, length);
            frames.forEach((f, n) => {
              const expected = accepts(shard, f) && accepts(length, f);
              // The same, in the terms a worker reads it: its shard (shardOf) and the ring's side of the bound.
              const inTerms = shardOf(f, count) === index && (f.length > bound) === large;
              const got = runFilter(both, f);
              if ((got !== 0) !== expected || expected !== inTerms || (expected && got !== runFilter(length, f))) wrong.push(`frame ${n} (${f.length} bytes), bound ${bound}, worker ${index}/${count}, large ${large}: ${got}`);
            });
          }
        }
      }
    }
    expect(wrong).toEqual([]);
  });

  it('gives each frame to exactly one ring of one worker, and a frame too short to shard to none', () => {
    for (const count of [2, 3, 4]) {
      const programs = Array.from({ length: count }, (_, i) => [false, true].map((large) => andFilters(shardFilter(count, i), lengthFilter(SMALL_FRAME_MAX, large)))).flat();
      for (const f of frames) {
        const takers = programs.filter((p) => accepts(p, f)).length;
        expect([f.length, takers]).toEqual([f.length, shardOf(f, count) < 0 ? 0 : 1]);
      }
    }
  });

  it('composes in either order', () => {
    const shard = shardFilter(3, 1), length = lengthFilter(SMALL_FRAME_MAX, true);
    const lengthFirst = andFilters(length, shard);
    for (const f of frames) expect(accepts(lengthFirst, f)).toBe(accepts(shard, f) && accepts(length, f));
  });

  // Opcodes for hand-made programs (linux/filter.h).
  const LDB_ABS = 0x30, LDH_ABS = 0x28, LDH_IND = 0x48, LD_LEN = 0x80, LDX_IMM = 0x01, AND_K = 0x54, RET_A = 0x16, RET_K = 0x06;

  it('keeps the first program\'s far jumps (conditional up to 255, JA beyond), takes RET A as accepting when A is not 0, and starts the second with A and X at 0', () => {
    const pad = (p: BpfProgram, n: number) => { for (let i = 0; i < n; i++) p.op(LDX_IMM, 7); return p; };
    const first = new BpfProgram()
      .op(LDX_IMM, 7)
      .op(LDB_ABS, 14)
      .jeq(0x45, 'v4') // 250 instructions ahead
      .op(LDB_ABS, 15).jeq(0, 'drop')
      .ja('tail') // 750 ahead: only a JA reaches that far
      .label('drop').op(RET_K, 0);
    pad(first, 246).label('v4').op(LD_LEN).op(AND_K, 3).op(RET_A); // accept unless the length is a multiple of 4
    pad(first, 500).label('tail').op(RET_K, 0x1234);
    const a = first.assemble();
    expect([a.readUInt8(2 * 8 + 2), a.readUInt32LE(5 * 8 + 4)]).toEqual([250, 750]);
    // The first program leaves X at 7: an indexed load with X at 0 reads the ethertype.
    const b = new BpfProgram().op(LDH_IND, 12).jeq(0x0800, 'ok').jeq(0x86dd, 'ok').op(RET_K, 0).label('ok').op(LDH_ABS, 12).op(RET_A).assemble();
    const both = andFilters(a, b);
    const random = seededRandom(5);
    let retA = 0, farJump = 0;
    for (let n = 0; n < 600; n++) {
      const f = flowFrame(randomFlow(random), 100 + n);
      if (n % 5 === 0) f[15] = 0;
      if (n % 7 === 0) f[14] = 0x60;
      const expected = accepts(a, f) && accepts(b, f);
      expect(runFilter(both, f)).toBe(expected ? runFilter(b, f) : 0);
      if (f[14] === 0x45) retA++; else if (f[15] !== 0) farJump++;
    }
    expect(Math.min(retA, farJump)).toBeGreaterThan(50);
  });

  it('refuses programs it cannot compose, and a composition longer than the kernel takes', () => {
    const ok = lengthFilter(SMALL_FRAME_MAX, false);
    expect(() => andFilters(new Uint8Array(12), ok)).toThrow(/first filter: 12 bytes is not 1 to 4096 whole instructions/);
    expect(() => andFilters(ok, ok.subarray(0, 8))).toThrow(/second filter: does not end with a return/);
    const leaves = Buffer.from(ok);
    leaves.writeUInt8(5, 8 + 3); // jgt's false branch past the end
    expect(() => andFilters(leaves, ok)).toThrow(/first filter: the jump at 1 leaves the program/);
    const long = new BpfProgram();
    for (let i = 0; i < 2046; i++) long.op(LDX_IMM, 0);
    const half = long.op(RET_K, 1).assemble(); // 2,047 instructions; two of them and the reset make 4,096
    expect(andFilters(half, half).length / 8).toBe(BPF_MAXINSNS);
    const more = Buffer.concat([Buffer.from([LDX_IMM, 0, 0, 0, 0, 0, 0, 0]), half]);
    expect(() => andFilters(more, half)).toThrow(ShardError);
    expect(() => andFilters(more, half)).toThrow(/4097 instructions, more than the kernel's 4096/);
  });
});
