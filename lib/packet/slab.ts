/**
 * Copies of frames that must outlive the I/O ring (held for comparison) are
 * bump-allocated from large slabs instead of one Buffer each: one allocation
 * per MiB instead of per frame. A slab is freed by the GC once nothing
 * points into it.
 */
const SLAB_BYTES = 1 << 20;

export class SlabCopier {
  private slab: Buffer = Buffer.allocUnsafeSlow(SLAB_BYTES);
  private used = 0;

  copy(src: Uint8Array): Buffer {
    const n = src.length;
    if (n > SLAB_BYTES / 4) return Buffer.from(src); // GSO super-frames: their own buffer
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
