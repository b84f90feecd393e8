/**
 * Liveness of the replicas, from what the bridge itself can see. Pure: the
 * pipeline and the bridge feed it frames, link events and time; it answers
 * with what to do.
 *
 * SilenceDetector — the active replica says nothing while the standby keeps
 * answering the same (compared) flows. Suspicion starts when the standby has
 * sent `minStandbyFrames` frames (counted as on the wire: a GSO super-frame
 * is as many as its segments) since the active replica's last frame, and
 * the first of them is `silenceMs` old, or when it has sent fewer but the
 * first is `fewFramesSilenceMs` old (a lone SYN-ACK or small answer, whose
 * next frame would wait for a retransmission). Then, if a probe target is known, an
 * ICMP echo goes to the active replica alone: any frame from it within
 * `probeTimeoutMs` (the echo reply included) clears it. One lost frame, a
 * slow guest that still has a kernel, or a flow that only the standby
 * answers (a divergence: the checkpoint triggers handle that) do not fail
 * over: the probe is answered.
 *
 * CarrierDebouncer — a port's carrier went down. Failover waits `holdMs`
 * for the carrier to come back, so a short link flap (a bond renegotiating,
 * a tap re-opened) is counted and ignored. Deletion of the interface is
 * final at once.
 */
export type SilenceVerdict = 'quiet' | 'probe' | 'dead';

export interface SilenceConfig {
  /** How long the active replica may stay silent while the standby talks. 0: off. */
  silenceMs: number;
  /** How long an echo probe may take; 0: no probe (silence alone decides). */
  probeTimeoutMs: number;
  minStandbyFrames: number;
  /**
   * With fewer than `minStandbyFrames` from the standby (one SYN-ACK, one
   * small answer: its next frame waits for the client's retransmission, 200
   * ms to 1 s later), the silence that counts instead; 0 or absent: only
   * `minStandbyFrames` frames start a suspicion.
   */
  fewFramesSilenceMs?: number;
}

export class SilenceDetector {
  private lastActiveUs = 0;
  private standbyFrames = 0;
  private firstStandbyUs = 0;
  private probeSentUs = -1;
  probesSent = 0;
  /** Suspicions cleared by the active replica speaking (a probe reply or any frame). */
  falseAlarms = 0;

  constructor(private readonly config: SilenceConfig) {}

  /** Any frame from the active replica. */
  noteActive(nowUs: number): void {
    this.lastActiveUs = nowUs;
    if (this.standbyFrames !== 0) {
      this.standbyFrames = 0;
      if (this.probeSentUs >= 0) {
        this.falseAlarms++;
        this.probeSentUs = -1;
      }
    }
  }

  /**
   * A frame from the standby that says something on a compared flow;
   * `segments`: how many frames it is on the wire (a GSO super-frame is
   * several), so the standby's saying counts the same with offloads on.
   */
  noteStandby(nowUs: number, segments = 1): void {
    if (this.standbyFrames === 0) this.firstStandbyUs = nowUs;
    this.standbyFrames += segments;
  }

  /** How long the active replica has been silent while the standby talked (µs), 0 if it has not (or not enough to count). */
  silentForUs(nowUs: number): number {
    return this.neededUs() === null ? 0 : nowUs - this.firstStandbyUs;
  }

  /** The silence that makes a suspicion with what the standby has said so far (µs), null: not enough said. */
  private neededUs(): number | null {
    if (this.standbyFrames >= this.config.minStandbyFrames) return this.config.silenceMs * 1000;
    const few = this.config.fewFramesSilenceMs ?? 0;
    return this.standbyFrames > 0 && few > 0 ? Math.max(few, this.config.silenceMs) * 1000 : null;
  }

  /** When `tick` will next have something to decide (a probe to send or a verdict), or null. */
  deadlineUs(): number | null {
    if (this.config.silenceMs <= 0) return null;
    if (this.probeSentUs >= 0) return this.probeSentUs + this.config.probeTimeoutMs * 1000;
    const needed = this.neededUs();
    return needed === null ? null : this.firstStandbyUs + needed;
  }

  /** Since when the silence counts (for the failover record). */
  get silentSinceUs(): number {
    return this.firstStandbyUs;
  }

  tick(nowUs: number, canProbe: boolean): SilenceVerdict {
    if (this.config.silenceMs <= 0) return 'quiet';
    if (this.probeSentUs >= 0) {
      return nowUs - this.probeSentUs >= this.config.probeTimeoutMs * 1000 ? 'dead' : 'quiet';
    }
    const needed = this.neededUs();
    if (needed === null || nowUs - this.firstStandbyUs < needed) return 'quiet';
    if (this.config.probeTimeoutMs > 0 && canProbe) {
      this.probeSentUs = nowUs;
      this.probesSent++;
      return 'probe';
    }
    return 'dead';
  }

  /** Roles changed (failover, re-protection): start afresh. */
  reset(nowUs: number): void {
    this.lastActiveUs = nowUs;
    this.standbyFrames = 0;
    this.probeSentUs = -1;
  }
}

export class CarrierDebouncer {
  private downSinceUs = -1;
  flaps = 0;

  constructor(readonly holdMs: number) {}

  get isDown(): boolean {
    return this.downSinceUs >= 0;
  }

  get downSince(): number {
    return this.downSinceUs;
  }

  /** Carrier lost at `atUs`. Returns the time at which it counts as dead unless it comes back. */
  down(atUs: number): number {
    if (this.downSinceUs < 0) this.downSinceUs = atUs;
    return this.downSinceUs + this.holdMs * 1000;
  }

  /** Carrier back: a flap if it had been down. */
  up(): boolean {
    if (this.downSinceUs < 0) return false;
    this.downSinceUs = -1;
    this.flaps++;
    return true;
  }

  /** Whether the carrier has been down for the whole hold time. */
  expired(nowUs: number): boolean {
    return this.downSinceUs >= 0 && nowUs >= this.downSinceUs + this.holdMs * 1000;
  }

  reset(): void {
    this.downSinceUs = -1;
  }
}
