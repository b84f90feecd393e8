/**
 * FlowLookup: a flow-table lookup that remembers the last flow it found.
 * Consecutive frames mostly belong to one flow (a burst of one transfer);
 * for them the key bytes are compared in place, and neither a key string
 * nor a hash lookup is made.
 */
import { DecodedFrame } from '../packet/frame';
import { FlowEntry, FlowTable } from './flow-table';
import { Direction, MAX_FLOW_KEY_BYTES, writeFlowKey } from './key';

export class FlowLookup<S> {
  private readonly scratch = Buffer.alloc(MAX_FLOW_KEY_BYTES);
  private readonly lastKey = Buffer.alloc(MAX_FLOW_KEY_BYTES);
  private lastLength = 0;
  private last: FlowEntry<S> | null = null;
  hits = 0;

  constructor(private readonly table: FlowTable<S>, private readonly dir: Direction) {}

  /** The frame's flow; created with `create` if given and absent. */
  find(f: DecodedFrame, nowUs: number, create?: (key: string) => S): FlowEntry<S> | undefined {
    const key = this.scratch;
    const n = writeFlowKey(f, this.dir, key);
    const last = this.last;
    if (last !== null && !last.removed && n === this.lastLength && sameBytes(key, this.lastKey, n)) {
      this.hits++;
      this.table.touch(last, nowUs);
      return last;
    }
    const text = key.toString('latin1', 0, n);
    const entry = create ? this.table.getOrCreate(text, nowUs, create) : this.table.get(text, nowUs);
    if (entry) {
      key.copy(this.lastKey, 0, 0, n);
      this.lastLength = n;
      this.last = entry;
    }
    return entry;
  }
}

function sameBytes(a: Buffer, b: Buffer, n: number): boolean {
  for (let i = n - 1; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}
