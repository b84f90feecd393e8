/**
 * Copies of frames that must outlive the I/O ring (held for comparison) are
 * bump-allocated from large slabs instead of one Buffer each.
 *
 * SlabCopier: slabs are freed by the GC once nothing points into them. For
 * copies whose lifetime nobody tracks (the backup's bytes a comparator
 * keeps, held ingress).
 *
 * SlabPool: slabs are reused. Every copy counts against its slab until
 * `release`; a full slab whose copies are all released goes back to the
 * free list at the next `endBreath` (the driver calls it after flushing its
 * ports, so no send queue still points into the slab). Fresh memory costs a
 * page fault per 4 KiB on first touch; reused slabs do not.
 */
const SLAB_BYTES = 1 << 18;
const LARGE_COPY = SLAB_BYTES / 4;

export class SlabCopier {
  private slab: Buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
  private used = 0;

  copy(src: Uint8Array): Buffer {
    const n = src.length;
    if (n > LARGE_COPY) return Buffer.from(src); // GSO super-frames: their own buffer
    if (this.used + n > SLAB_BYTES) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.used = 0;
    }
    const out = this.slab.subarray(this.used, this.used + n);
    out.set(src);
    // Keep the next copy 8-byte aligned so DataView reads stay cheap.
    this.used += (n + 7) & ~7;
    return out;
  }
}

export class Slab {
  readonly bytes: Buffer;
  used = 0;
  /** Copies handed out and not yet released. */
  live = 0;
  full = false;

  constructor(size: number) {
    this.bytes = Buffer.allocUnsafeSlow(size);
  }
}

export class SlabPool {
  /** The slab the last `copy` came from (null for a large copy with its own buffer). */
  lastSlab: Slab | null = null;
  slabsAllocated = 1;
  private current: Slab;
  private readonly free: Slab[] = [];
  private emptiedThisBreath: Slab[] = [];

  /**
   * `recycle` false: never reuse a slab (copies may be kept by code that
   * does not release them). `waitForBreath` false: the copies are never
   * handed to a port, so an emptied slab is reusable at once.
   */
  constructor(
    private readonly recycle = true,
    private readonly waitForBreath = true,
    private readonly maxFreeSlabs = 64,
    /** Slab size; small ones only in tests, to make reuse happen. */
    private readonly slabBytes = SLAB_BYTES,
  ) {
    this.current = new Slab(slabBytes);
  }

  copy(src: Uint8Array): Buffer {
    const n = src.length;
    if (n > this.slabBytes / 2) {
      this.lastSlab = null;
      return Buffer.from(src);
    }
    let slab = this.current;
    if (slab.used + n > this.slabBytes) {
      slab.full = true;
      const emptied = slab;
      slab = this.current = this.free.pop() ?? this.allocate();
      if (emptied.live === 0 && this.recycle) {
        if (this.waitForBreath) this.emptiedThisBreath.push(emptied);
        else this.reuse(emptied);
      }
    }
    const out = slab.bytes.subarray(slab.used, slab.used + n);
    out.set(src);
    slab.used += (n + 7) & ~7;
    slab.live++;
    this.lastSlab = slab;
    return out;
  }

  release(slab: Slab | null): void {
    if (slab === null) return;
    if (--slab.live === 0 && slab.full && this.recycle) {
      if (this.waitForBreath) this.emptiedThisBreath.push(slab);
      else this.reuse(slab);
    }
  }

  /** Everything released so far has left the process (ports flushed): its slabs may be reused. */
  endBreath(): void {
    if (this.emptiedThisBreath.length === 0) return;
    for (const slab of this.emptiedThisBreath) this.reuse(slab);
    this.emptiedThisBreath = [];
  }

  private reuse(slab: Slab): void {
    if (slab.live !== 0 || slab === this.current || this.free.length >= this.maxFreeSlabs) return;
    slab.used = 0;
    slab.full = false;
    this.free.push(slab);
  }

  private allocate(): Slab {
    this.slabsAllocated++;
    return new Slab(this.slabBytes);
  }
}
