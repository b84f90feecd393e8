import fc from 'fast-check';
import { FlowEntry, FlowTable } from '../../../lib/flow';

type Evicted = [key: string, why: 'lru' | 'idle'];

function tableOf(max: number): { table: FlowTable<number>; evicted: Evicted[] } {
  const evicted: Evicted[] = [];
  const table = new FlowTable<number>(max, (e: FlowEntry<number>, why) => evicted.push([e.key, why]));
  return { table, evicted };
}

/** Keys from least to most recently used, read through the public face only. */
function lruOrder(table: FlowTable<number>): string[] {
  return [...table.entries()].sort((a, b) => a.lastSeenUs - b.lastSeenUs).map((e) => e.key);
}

describe('FlowTable', () => {
  it('refuses a maximum below one flow', () => {
    expect(() => new FlowTable<number>(0)).toThrow(RangeError);
    expect(() => new FlowTable<number>(NaN)).toThrow(RangeError);
  });

  it('creates a flow once and finds it afterwards', () => {
    const { table } = tableOf(4);
    let created = 0;
    const a = table.getOrCreate('a', 1, () => ++created);
    const again = table.getOrCreate('a', 2, () => ++created);
    expect(again).toBe(a);
    expect(created).toBe(1);
    expect(table.get('a', 3)?.state).toBe(1);
    expect(table.get('missing', 3)).toBeUndefined();
    expect(table.size).toBe(1);
  });

  it('evicts the least recently used flow when full, and tells onEvict it was for room', () => {
    const { table, evicted } = tableOf(3);
    table.getOrCreate('a', 1, () => 1);
    table.getOrCreate('b', 2, () => 2);
    table.getOrCreate('c', 3, () => 3);
    table.getOrCreate('d', 4, () => 4);
    expect(evicted).toEqual([['a', 'lru']]);
    expect(table.peek('a')).toBeUndefined();
    expect(table.size).toBe(3);
    expect(table.evictions).toBe(1);
  });

  it('protects a flow that was touched from the next eviction', () => {
    const { table, evicted } = tableOf(3);
    table.getOrCreate('a', 1, () => 1);
    table.getOrCreate('b', 2, () => 2);
    table.getOrCreate('c', 3, () => 3);
    table.get('a', 4); // a is now the most recent: b, c, a
    table.getOrCreate('d', 5, () => 4); // evicts b: c, a, d
    table.getOrCreate('c', 6, () => 5); // found, so touched, nothing evicted: a, d, c
    table.getOrCreate('e', 7, () => 6); // evicts a: d, c, e
    expect(evicted.map(([k]) => k)).toEqual(['b', 'a']);
    expect([...table.entries()].map((e) => e.key).sort()).toEqual(['c', 'd', 'e']);
    expect(table.peek('c')?.state).toBe(3);
  });

  it('does not refresh a flow looked at with peek', () => {
    const { table, evicted } = tableOf(2);
    table.getOrCreate('a', 1, () => 1);
    table.getOrCreate('b', 2, () => 2);
    expect(table.peek('a')?.state).toBe(1);
    table.getOrCreate('c', 3, () => 3);
    expect(evicted).toEqual([['a', 'lru']]);
  });

  it('deletes a flow without calling onEvict', () => {
    const { table, evicted } = tableOf(2);
    table.getOrCreate('a', 1, () => 1);
    table.getOrCreate('b', 2, () => 2);
    table.delete('a');
    table.delete('never there');
    expect(table.size).toBe(1);
    table.getOrCreate('c', 3, () => 3);
    expect(evicted).toEqual([]);
    expect(table.size).toBe(2);
  });

  it('keeps working with room for a single flow', () => {
    const { table, evicted } = tableOf(1);
    for (let i = 0; i < 5; i++) table.getOrCreate(`k${i}`, i, () => i);
    expect(table.size).toBe(1);
    expect(table.peek('k4')?.state).toBe(4);
    expect(evicted.map(([k]) => k)).toEqual(['k0', 'k1', 'k2', 'k3']);
  });

  it('never exceeds its maximum nor empties itself wholesale, and evicts in LRU order (model check)', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('create' as const), key: fc.integer({ min: 0, max: 30 }) }),
      fc.record({ kind: fc.constant('get' as const), key: fc.integer({ min: 0, max: 30 }) }),
      fc.record({ kind: fc.constant('delete' as const), key: fc.integer({ min: 0, max: 30 }) }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(op, { maxLength: 200 }), (max, ops) => {
        const { table, evicted } = tableOf(max);
        /** The model: keys from least to most recently used. */
        let model: string[] = [];
        let now = 0;
        for (const { kind, key } of ops) {
          const k = `f${key}`;
          now++;
          const sizeBefore = table.size;
          evicted.length = 0;
          if (kind === 'create') {
            let expectedEvicted: Evicted[] = [];
            if (!model.includes(k) && model.length >= max) {
              expectedEvicted = [[model[0], 'lru']];
              model = model.slice(1);
            }
            model = [...model.filter((m) => m !== k), k];
            table.getOrCreate(k, now, () => key);
            expect(evicted).toEqual(expectedEvicted);
            expect(table.size).toBeGreaterThanOrEqual(Math.min(sizeBefore, 1)); // never wiped
          } else if (kind === 'get') {
            const found = table.get(k, now);
            expect(found !== undefined).toBe(model.includes(k));
            if (found) model = [...model.filter((m) => m !== k), k];
          } else {
            table.delete(k);
            model = model.filter((m) => m !== k);
          }
          expect(table.size).toBeLessThanOrEqual(max);
          expect(table.size).toBe(model.length);
          expect(lruOrder(table)).toEqual(model);
        }
      }),
      { numRuns: 500 },
    );
  });

  describe('expire', () => {
    /** Flows whose state is their own idle allowance, in µs. */
    function tableWithAllowances(flows: [key: string, lastSeenUs: number, allowanceUs: number][]) {
      const evicted: Evicted[] = [];
      const table = new FlowTable<number>(100, (e, why) => evicted.push([e.key, why]));
      for (const [key, lastSeen, allowance] of flows) table.getOrCreate(key, lastSeen, () => allowance);
      return { table, evicted };
    }

    it('evicts only flows idle past their own allowance, and says why', () => {
      const { table, evicted } = tableWithAllowances([
        ['syn-sent', 0, 5_000], // idle 10 000 > 5 000: goes
        ['established', 1_000, 60_000], // idle 9 000 < 60 000: stays though older than the next
        ['closing', 2_000, 5_000], // idle 8 000 > 5 000: goes
        ['fresh', 9_000, 5_000], // idle 1 000: stays
      ]);
      const n = table.expire(10_000, (allowance) => allowance, 5_000);
      expect(n).toBe(2);
      expect(evicted).toEqual([['syn-sent', 'idle'], ['closing', 'idle']]);
      expect([...table.entries()].map((e) => e.key).sort()).toEqual(['established', 'fresh']);
      expect(table.evictions).toBe(2);
    });

    it('keeps a flow idle exactly as long as its allowance', () => {
      const { table, evicted } = tableWithAllowances([['edge', 0, 1_000]]);
      expect(table.expire(1_000, (a) => a, 1_000)).toBe(0);
      expect(evicted).toEqual([]);
      expect(table.expire(1_001, (a) => a, 1_000)).toBe(1);
    });

    it('counts a touch as activity', () => {
      const { table } = tableWithAllowances([['a', 0, 1_000], ['b', 0, 1_000]]);
      table.get('a', 900);
      table.expire(1_500, (a) => a, 1_000);
      expect([...table.entries()].map((e) => e.key)).toEqual(['a']);
    });

    it('agrees with checking every flow one by one', () => {
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 100, max: 8_000 })), { maxLength: 40 }),
          fc.integer({ min: 0, max: 20_000 }),
          (flows, now) => {
            const sorted = [...flows].sort((a, b) => a[0] - b[0]);
            const spec = sorted.map(([seen, allowance], i): [string, number, number] => [`f${i}`, seen, allowance]);
            const { table, evicted } = tableWithAllowances(spec);
            const shortest = spec.reduce((m, [, , a]) => Math.min(m, a), Infinity);
            table.expire(now, (a) => a, shortest);
            const expected = spec.filter(([, seen, a]) => now - seen > a).map(([k]): Evicted => [k, 'idle']);
            expect(evicted).toEqual(expected);
            expect(table.size).toBe(spec.length - expected.length);
          },
        ),
        { numRuns: 500 },
      );
    });
  });
});
