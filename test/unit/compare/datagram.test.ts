import fc from 'fast-check';
import { BACKUP, DatagramComparator, MatchTotals, PRIMARY, Side } from '../../../lib/compare';
import { SlabPool } from '../../../lib/packet';

/** Tiny slabs: copies are reused as soon as released, so a use after release shows up as wrong bytes. */
const pool = () => new SlabPool(true, false, 4, 2048);

/**
 * A comparator and the release gate the pipeline puts after it: primary
 * datagram i goes to the client once `matched` reaches i, each exactly once,
 * in the primary's order.
 */
function rig(window: number) {
  const totals: MatchTotals = { matchedBytes: 0 };
  const cmp = new DatagramComparator(pool(), totals, window);
  const primary: string[] = [];
  const released: string[] = [];
  const releases = new Map<number, number>();
  const releaseReady = () => {
    while (released.length < cmp.matched) {
      const i = released.length;
      releases.set(i, (releases.get(i) ?? 0) + 1);
      released.push(primary[i]);
    }
  };
  const send = (side: Side, text: string): boolean => {
    if (side === PRIMARY) primary.push(text);
    const revealed = cmp.append(side, Buffer.from(text));
    if (!cmp.mismatch) releaseReady();
    return revealed;
  };
  return { cmp, totals, released, releases, send };
}

/** Interleaves the two sides' datagrams following a schedule of side choices (each side keeps its own order). */
function interleave(p: string[], b: string[], schedule: boolean[]): [Side, string][] {
  const out: [Side, string][] = [];
  let i = 0, j = 0, k = 0;
  while (i < p.length || j < b.length) {
    const pickPrimary = j >= b.length || (i < p.length && (schedule[k++ % Math.max(1, schedule.length)] ?? true));
    if (pickPrimary) out.push([PRIMARY, p[i++]]);
    else out.push([BACKUP, b[j++]]);
  }
  return out;
}

/** Sorting positions by i + r with 0 <= r <= w - 1 moves no element by more than w - 1 places. */
function shuffleWithin<T>(items: T[], jitter: number[], window: number): T[] {
  const keyed = items.map((item, i) => ({ item, i, key: i + ((jitter[i] ?? 0) % window) }));
  keyed.sort((a, b) => a.key - b.key || a.i - b.i);
  keyed.forEach((k, at) => {
    if (Math.abs(k.i - at) >= window) throw new Error(`generator moved datagram ${k.i} to ${at} with window ${window}`);
  });
  return keyed.map((k) => k.item);
}

describe('DatagramComparator', () => {
  it('releases datagrams sent in the same order one by one, as the backup confirms each', () => {
    const r = rig(8);
    r.send(PRIMARY, 'answer-1');
    expect(r.released).toEqual([]);
    r.send(BACKUP, 'answer-1');
    expect(r.released).toEqual(['answer-1']);
    r.send(BACKUP, 'answer-2');
    r.send(PRIMARY, 'answer-2');
    expect(r.released).toEqual(['answer-1', 'answer-2']);
    expect(r.cmp.reordered).toBe(0);
    expect(r.cmp.matchedBytes).toBe(16);
    expect(r.totals.matchedBytes).toBe(16);
  });

  it('matches a swapped pair and releases both in the primary order once the earlier one is confirmed', () => {
    const r = rig(8);
    r.send(PRIMARY, 'for query A');
    r.send(PRIMARY, 'for query B');
    r.send(BACKUP, 'for query B');
    // B is confirmed, but A went first on the primary and is not yet: B does not overtake it.
    expect(r.released).toEqual([]);
    expect(r.cmp.unmatched).toEqual([1, 0]);
    r.send(BACKUP, 'for query A');
    expect(r.released).toEqual(['for query A', 'for query B']);
    expect(r.cmp.mismatch).toBeNull();
    expect(r.cmp.reordered).toBe(2);
    expect(r.totals.datagramsReordered).toBe(2);
    expect(r.cmp.pendingBytes).toBe(0);
  });

  it('matches a backup that answered first in another order', () => {
    const r = rig(4);
    for (const t of ['c', 'a', 'b']) r.send(BACKUP, t);
    for (const t of ['a', 'b', 'c']) r.send(PRIMARY, t);
    expect(r.cmp.mismatch).toBeNull();
    expect(r.released).toEqual(['a', 'b', 'c']);
  });

  it('calls a datagram with no equal among the other side\'s datagrams within the window a datagram-window mismatch', () => {
    const r = rig(4);
    r.send(PRIMARY, 'the answer');
    for (const t of ['other 1', 'other 2', 'other 3']) expect(r.send(BACKUP, t)).toBe(false);
    expect(r.cmp.mismatch).toBeNull(); // the backup's 4th may still be the equal
    expect(r.send(BACKUP, 'the answe?')).toBe(true);
    expect(r.cmp.mismatch).toMatchObject({ kind: 'datagram-window', position: 0, offset: 0, primary: '"the answer"', backup: '"other 1"' });
    expect(r.released).toEqual([]);
    expect(r.cmp.pendingBytes).toBe(0);
  });

  it('calls a reordering that moves a datagram as far as the window a mismatch, and one place less a match', () => {
    const sent = ['a', 'b', 'c', 'd', 'e'];
    const moved = ['b', 'c', 'd', 'e', 'a']; // a moved 4 places
    const tight = rig(4);
    for (const t of sent) tight.send(PRIMARY, t);
    for (const t of moved) tight.send(BACKUP, t);
    expect(tight.cmp.mismatch).toMatchObject({ kind: 'datagram-window', position: 0 });
    const wide = rig(5);
    for (const t of sent) wide.send(PRIMARY, t);
    for (const t of moved) wide.send(BACKUP, t);
    expect(wide.cmp.mismatch).toBeNull();
    expect(wide.released).toEqual(sent);
  });

  it('with a window of 1 compares in strict order and names the differing datagram as before', () => {
    const r = rig(1);
    r.send(PRIMARY, 'first');
    r.send(PRIMARY, 'second');
    expect(r.send(BACKUP, 'second')).toBe(true);
    expect(r.cmp.mismatch).toMatchObject({ kind: 'datagram', position: 0, offset: 0, primary: '"first"', backup: '"second"' });
  });

  it('pairs equal datagrams in order, so repeated answers match whatever the other order', () => {
    const r = rig(3);
    for (const t of ['ping', 'x', 'ping', 'ping']) r.send(PRIMARY, t);
    for (const t of ['ping', 'ping', 'x', 'ping']) r.send(BACKUP, t);
    expect(r.cmp.mismatch).toBeNull();
    expect(r.released).toEqual(['ping', 'x', 'ping', 'ping']);
    expect([...r.releases.values()].every((n) => n === 1)).toBe(true);
  });

  it('does not let one backup datagram confirm two equal primary datagrams', () => {
    const r = rig(8);
    r.send(PRIMARY, 'same');
    r.send(PRIMARY, 'same');
    r.send(BACKUP, 'same');
    expect(r.released).toEqual(['same']);
    expect(r.cmp.unmatched).toEqual([1, 0]);
    r.send(BACKUP, 'same');
    expect(r.released).toEqual(['same', 'same']);
  });

  it('counts a duplicate the backup sent beyond the window as a mismatch', () => {
    const r = rig(2);
    r.send(PRIMARY, 'once');
    r.send(BACKUP, 'once');
    r.send(BACKUP, 'once'); // a second copy the primary never sent
    r.send(PRIMARY, 'next');
    expect(r.cmp.mismatch).toBeNull();
    r.send(PRIMARY, 'after');
    expect(r.cmp.mismatch).toMatchObject({ kind: 'datagram-window', position: 1, primary: '"next"', backup: '"once"' });
    expect(r.released).toEqual(['once']);
  });

  it('forgets everything at a reset: counts, unmatched datagrams and their copies', () => {
    const copies = pool();
    const cmp = new DatagramComparator(copies, { matchedBytes: 0 }, 8);
    cmp.append(BACKUP, Buffer.from('said before the checkpoint'));
    const slab = copies.lastSlab!;
    expect(slab.live).toBe(1);
    cmp.append(PRIMARY, Buffer.from('primary before'));
    cmp.reset();
    expect(slab.live).toBe(0);
    expect({ matched: cmp.matched, sent: cmp.sent, pendingBytes: cmp.pendingBytes, unmatched: cmp.unmatched, reordered: cmp.reordered })
      .toEqual({ matched: 0, sent: [0, 0], pendingBytes: 0, unmatched: [0, 0], reordered: 0 });
    // The backup's datagram from before the reset no longer confirms anything.
    cmp.append(PRIMARY, Buffer.from('said before the checkpoint'));
    expect(cmp.matched).toBe(0);
    cmp.append(BACKUP, Buffer.from('said before the checkpoint'));
    expect(cmp.matched).toBe(1);
  });

  it('starts afresh after a mismatch once reset', () => {
    const r = rig(1);
    r.send(PRIMARY, 'a');
    r.send(BACKUP, 'b');
    expect(r.cmp.mismatch).not.toBeNull();
    r.cmp.reset();
    expect(r.cmp.mismatch).toBeNull();
    expect(r.cmp.append(PRIMARY, Buffer.from('c'))).toBe(false);
    expect(r.cmp.append(BACKUP, Buffer.from('c'))).toBe(false);
    expect(r.cmp.matched).toBe(1);
  });

  it('on expiry calls it a mismatch only when the backup too has datagrams nothing matched', () => {
    const behind = rig(8);
    behind.send(PRIMARY, 'answer');
    expect(behind.cmp.expire()).toBe(false); // the backup is just slow
    const differs = rig(8);
    differs.send(PRIMARY, 'answer 1');
    differs.send(BACKUP, 'answer 2');
    expect(differs.cmp.expire()).toBe(true);
    expect(differs.cmp.mismatch).toMatchObject({ kind: 'datagram-window', position: 0, offset: 7, primary: '"answer 1"', backup: '"answer 2"' });
    expect(differs.cmp.expire()).toBe(false); // reported once
  });

  it('tells which backup datagrams the client has received the equal of, for failover', () => {
    const r = rig(8);
    r.send(PRIMARY, 'one');
    r.send(BACKUP, 'two');
    r.send(BACKUP, 'extra');
    r.send(PRIMARY, 'two');
    expect([1, 2, 3].map((pos) => r.cmp.backupDelivered(pos))).toEqual([false, false, false]);
    r.send(BACKUP, 'one');
    expect(r.released).toEqual(['one', 'two']);
    expect([1, 2, 3, 4].map((pos) => r.cmp.backupDelivered(pos))).toEqual([true, false, true, false]);
  });

  it('keeps records of a few datagrams only, however long a flow of reordered answers runs', () => {
    const r = rig(4);
    let most = 0;
    for (let i = 0; i < 5000; i += 2) {
      // The backup answers each pair swapped, one pair behind the primary.
      r.send(PRIMARY, `q${i}`);
      r.send(PRIMARY, `q${i + 1}`);
      if (i > 0) {
        r.send(BACKUP, `q${i - 1}`);
        r.send(BACKUP, `q${i - 2}`);
      }
      most = Math.max(most, r.cmp.records);
    }
    expect(r.cmp.mismatch).toBeNull();
    expect(r.released).toHaveLength(4998);
    expect(most).toBeLessThanOrEqual(4);
  });

  it('rejects a window outside 1 to 256', () => {
    for (const w of [0, 257, 1.5]) expect(() => new DatagramComparator(pool(), { matchedBytes: 0 }, w)).toThrow(RangeError);
  });

  describe('properties', () => {
    // A small alphabet makes equal datagrams common: pairing must stay one to one.
    const datagramsArb = fc.array(fc.constantFrom('a', 'b', 'c', 'dd', 'eee', ''), { minLength: 1, maxLength: 40 });
    const windowArb = fc.integer({ min: 1, max: 8 });
    const jitterArb = fc.array(fc.nat({ max: 7 }), { maxLength: 40 });
    const scheduleArb = fc.array(fc.boolean(), { maxLength: 30 });

    it('matches every datagram and releases each primary datagram exactly once, in order, when the backup reorders within the window', () => {
      fc.assert(fc.property(datagramsArb, windowArb, jitterArb, scheduleArb, (sent, window, jitter, schedule) => {
        const backup = shuffleWithin(sent, jitter, window);
        const r = rig(window);
        for (const [side, text] of interleave(sent, backup, schedule)) r.send(side, text);
        expect(r.cmp.mismatch).toBeNull();
        expect(r.cmp.matched).toBe(sent.length);
        expect(r.released).toEqual(sent);
        expect([...r.releases.values()].every((n) => n === 1)).toBe(true);
        expect(r.cmp.pendingBytes).toBe(0);
        expect(r.cmp.unmatched).toEqual([0, 0]);
        expect(r.totals.matchedBytes).toBe(sent.reduce((n, t) => n + t.length, 0));
      }), { numRuns: 400 });
    });

    it('reports a mismatch, and never releases the differing datagram, when the backup differs in one datagram', () => {
      fc.assert(fc.property(datagramsArb, windowArb, jitterArb, scheduleArb, fc.nat(), (sent, window, jitter, schedule, which) => {
        const backup = shuffleWithin(sent, jitter, window);
        const at = which % backup.length;
        backup[at] = `${backup[at]}#`; // equal to nothing the primary sent
        const r = rig(window);
        for (const [side, text] of interleave(sent, backup, schedule)) r.send(side, text);
        // Found by the window, or else by the unmatched-age trigger at the end.
        expect(r.cmp.mismatch !== null || r.cmp.expire()).toBe(true);
        expect(r.cmp.mismatch!.kind).toBe(window === 1 ? 'datagram' : 'datagram-window');
        expect(r.cmp.matched).toBeLessThan(sent.length);
        expect([...r.releases.values()].every((n) => n === 1)).toBe(true);
      }), { numRuns: 400 });
    });
  });
});
