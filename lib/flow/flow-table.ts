/**
 * FlowTable: bounded map from flow key to per-flow state, with an intrusive
 * LRU list. When full, the least recently used flow is evicted (and handed
 * to `onEvict` so its owner can settle it); the table is never wiped whole.
 */
export interface FlowEntry<S> {
  readonly key: string;
  state: S;
  lastSeenUs: number;
  /** Set when the entry leaves the table (evicted or deleted). */
  removed: boolean;
  /** LRU links: `newer` toward the head (most recent). */
  newer: FlowEntry<S> | null;
  older: FlowEntry<S> | null;
}

/** How many of the least recently used flows are looked at for a preferred victim. */
export const EVICTION_SCAN = 64;

export class FlowTable<S> {
  private readonly map = new Map<string, FlowEntry<S>>();
  private newest: FlowEntry<S> | null = null;
  private oldest: FlowEntry<S> | null = null;
  evictions = 0;

  /**
   * `evictFirst`: when the table is full, a flow for which it is true is
   * evicted before any older one for which it is false, looking at the
   * `EVICTION_SCAN` least recently used flows (a SYN flood then replaces its
   * own half-open flows, not an idle established connection).
   */
  constructor(
    readonly maxFlows: number,
    private readonly onEvict: (entry: FlowEntry<S>, why: 'lru' | 'idle') => void = () => {},
    private readonly evictFirst?: (state: S) => boolean,
  ) {
    if (!(maxFlows >= 1)) throw new RangeError(`maxFlows must be at least 1, got ${maxFlows}`);
  }

  get size(): number { return this.map.size; }

  get(key: string, nowUs: number): FlowEntry<S> | undefined {
    const e = this.map.get(key);
    if (e) this.touch(e, nowUs);
    return e;
  }

  /** Looks up without refreshing the LRU position. */
  peek(key: string): FlowEntry<S> | undefined {
    return this.map.get(key);
  }

  getOrCreate(key: string, nowUs: number, create: (key: string) => S): FlowEntry<S> {
    const found = this.get(key, nowUs);
    if (found) return found;
    if (this.map.size >= this.maxFlows && this.oldest) this.evict(this.victim(), 'lru');
    const e: FlowEntry<S> = { key, state: create(key), lastSeenUs: nowUs, removed: false, newer: null, older: this.newest };
    if (this.newest) this.newest.newer = e;
    this.newest = e;
    if (!this.oldest) this.oldest = e;
    this.map.set(key, e);
    return e;
  }

  delete(key: string): void {
    const e = this.map.get(key);
    if (e) this.unlink(e);
  }

  /**
   * Evicts flows idle longer than their own allowance `idleUs(state)`. Walks
   * from the least recently used and stops at the first flow idle no longer
   * than `shortestIdleUs`: every newer flow is fresher still.
   */
  expire(nowUs: number, idleUs: (state: S) => number, shortestIdleUs: number): number {
    let n = 0;
    let e = this.oldest;
    while (e && nowUs - e.lastSeenUs > shortestIdleUs) {
      const newer: FlowEntry<S> | null = e.newer;
      if (nowUs - e.lastSeenUs > idleUs(e.state)) { this.evict(e, 'idle'); n++; }
      e = newer;
    }
    return n;
  }

  *entries(): IterableIterator<FlowEntry<S>> {
    yield* this.map.values();
  }

  /** Marks an entry (found without a key lookup) as just used. */
  touch(e: FlowEntry<S>, nowUs: number): void {
    e.lastSeenUs = nowUs;
    if (e === this.newest) return;
    // unlink
    if (e.newer) e.newer.older = e.older;
    if (e.older) e.older.newer = e.newer;
    if (this.oldest === e) this.oldest = e.newer;
    // push at the head
    e.older = this.newest;
    e.newer = null;
    if (this.newest) this.newest.newer = e;
    this.newest = e;
  }

  private victim(): FlowEntry<S> {
    const oldest = this.oldest!;
    if (!this.evictFirst) return oldest;
    let e: FlowEntry<S> | null = oldest;
    for (let i = 0; e && i < EVICTION_SCAN; i++, e = e.newer) {
      if (this.evictFirst(e.state)) return e;
    }
    return oldest;
  }

  private evict(e: FlowEntry<S>, why: 'lru' | 'idle'): void {
    this.unlink(e);
    this.evictions++;
    this.onEvict(e, why);
  }

  private unlink(e: FlowEntry<S>): void {
    this.map.delete(e.key);
    e.removed = true;
    if (e.newer) e.newer.older = e.older;
    else this.newest = e.older;
    if (e.older) e.older.newer = e.newer;
    else this.oldest = e.newer;
    e.newer = e.older = null;
  }
}
