/**
 * Fuzz: frames from the real fixtures, mutated (bytes flipped in the
 * headers, truncated, extended, spliced), pushed through the whole pipeline
 * from all three sides, with checkpoints answered. Nothing may throw, loop or
 * grow without bound.
 */
import { ShadowPipeline, makePipelineConfig } from '../../lib/pipeline';
import { BACKUP, PRIMARY } from '../../lib/compare';
import { fixtureNames, loadFixture } from '../support/fixtures';
import { seededRandom } from '../support/random';

const MUTATED_FRAMES = 120_000;

const mulberry32 = seededRandom;

function mutate(src: Buffer, other: Buffer, rnd: () => number): Buffer {
  const kind = Math.floor(rnd() * 6);
  const b = Buffer.from(src);
  const headerSpan = Math.min(b.length, 96);
  switch (kind) {
    case 0: { // flip a few header bytes
      const n = 1 + Math.floor(rnd() * 4);
      for (let i = 0; i < n && headerSpan > 0; i++) b[Math.floor(rnd() * headerSpan)] = Math.floor(rnd() * 256);
      return b;
    }
    case 1: // truncate anywhere
      return b.subarray(0, Math.floor(rnd() * b.length));
    case 2: { // set a header byte to an extreme
      if (headerSpan > 0) b[Math.floor(rnd() * headerSpan)] = rnd() < 0.5 ? 0 : 0xff;
      return b;
    }
    case 3: // garbage appended
      return Buffer.concat([b, Buffer.from(Array.from({ length: Math.floor(rnd() * 64) }, () => Math.floor(rnd() * 256)))]);
    case 4: { // headers of one frame, body of another
      const cut = Math.floor(rnd() * Math.min(b.length, other.length));
      return Buffer.concat([b.subarray(0, cut), other.subarray(cut)]);
    }
    default: // unchanged: keeps real flows alive between the broken ones
      return b;
  }
}

describe('pipeline fuzz (needs the recorded fixtures)', () => {
  it(`survives ${MUTATED_FRAMES} mutated fixture frames with bounded memory`, () => {
    const pool: { origin: number; frame: Buffer }[] = [];
    for (const name of fixtureNames()) {
      loadFixture(name).forEach((records, origin) => records.forEach((r) => pool.push({ origin, frame: r.frame })));
    }
    expect(pool.length).toBeGreaterThan(100);
    const rnd = mulberry32(0x5eed);
    const config = makePipelineConfig({ maxFlows: 512, policy: { arp: 'compare', otherEtherTypes: 'compare', malformedFromVm: 'drop', malformedFromClient: 'forward', strayFromClient: 'primary-only', badTcpFlagsFromClient: 'drop' } });
    const outstanding: number[] = [];
    let released = 0;
    const pipeline = new ShadowPipeline(config, {
      toReplica: () => {}, toClient: () => { released++; },
      sendCheckpoint: (req) => outstanding.push(req.epoch),
      log: () => {},
    }, 0, true);

    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;
    let nowUs = 1_000_000;
    for (let i = 0; i < MUTATED_FRAMES; i++) {
      const a = pool[Math.floor(rnd() * pool.length)];
      const b = pool[Math.floor(rnd() * pool.length)];
      const frame = mutate(a.frame, b.frame, rnd);
      nowUs += Math.floor(rnd() * 200);
      if (a.origin === 0) pipeline.fromClient(frame, nowUs);
      else pipeline.fromVm(a.origin === 1 ? PRIMARY : BACKUP, frame, nowUs);
      if (i % 16 === 0) pipeline.tick(nowUs);
      // Half the checkpoints are answered at once, some fail, the rest time out.
      if (outstanding.length > 0 && rnd() < 0.5) {
        const epoch = outstanding.shift()!;
        if (rnd() < 0.8) pipeline.checkpointDone(epoch, nowUs);
        else pipeline.checkpointFailed(epoch, 'fuzz', nowUs);
      }
      if (i % 20_000 === 0) pipeline.agentConnected(true, nowUs);
    }
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;

    const malformed = Object.values(pipeline.malformed).reduce((n, c) => n + c.client + c.primary + c.backup, 0);
    expect(malformed).toBeGreaterThan(1000); // the mutations were seen as broken, not waved through
    expect(released).toBeGreaterThan(0);
    expect(pipeline.flows.size).toBeLessThanOrEqual(512);
    expect(pipeline.held.frames).toBeLessThanOrEqual(config.totalHighWater.frames);
    expect(pipeline.reports.length).toBeLessThanOrEqual(100_000);
    expect(heapGrowth).toBeLessThan(256 * 1024 * 1024);
  });
});
