/**
 * LabRelay: the smallest bridge that makes the lab's replicas both answer,
 * for recording fixtures. No comparison, no checkpoints.
 *
 *   client  ──┬──────────────────────────────► primary
 *             └─ translateForBackup ─────────► backup
 *   primary ──► release gate ──► client        (and observeVmFrame('primary'))
 *   backup  ──► dropped                        (and observeVmFrame('backup'))
 *
 * Release gate: a primary TCP frame goes to the client only once the backup
 * has sent the same flow up to the same relative sequence number (or reset
 * the flow, or `gateTimeoutMs` passed: then the flow is treated as diverged
 * and passes ungated from then on). Without it the client acknowledges
 * primary bytes the backup has not sent yet; translated, such an ACK is
 * beyond the backup's SND.NXT and RFC 793/5961 make the backup drop the
 * whole segment, command included, so lock-step protocols (FTP) stall on
 * the backup. The bridge's release stage prevents the same thing.
 *
 * Frames the translator releases from `observeVmFrame` go to the backup.
 * Every batch is flushed before the callback returns: a received frame is a
 * view of the source port's buffer and is sent by reference (held frames
 * are copies).
 */
import { PacketPort, ReceivedFrame } from '../io/port';
import { seqDiff } from '../packet/seq';
import { BackupIngressTranslator } from '../rewrite/backup-ingress';

export interface LabRelayPorts {
  readonly client: PacketPort;
  readonly primary: PacketPort;
  readonly backup: PacketPort;
}

export interface LabRelayOptions {
  /** Release-gate timeout per held frame, ms; 0 disables the gate. Default 200. */
  gateTimeoutMs?: number;
}

export interface LabRelayCounters {
  fromClient: number;
  toPrimary: number;
  toBackup: number;
  fromPrimary: number;
  toClient: number;
  /** Backup output: observed, never forwarded (the client only hears the primary). */
  fromBackup: number;
  /** Primary frames that waited for the backup. */
  gated: number;
  /** Flows whose gate timed out (the backup did not say as much as the primary). */
  gateTimeouts: number;
}

/** What the relay needs from a backup-ingress translator. */
export interface BackupTranslator {
  observeVmFrame(role: 'primary' | 'backup', frame: Buffer): Buffer[];
  translateForBackup(frame: Buffer): Buffer[];
}

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;

interface TcpHeaderFacts {
  /** VM port, client address and port: the same for both replicas. */
  flowKey: string;
  seq: number;
  flags: number;
  payloadLength: number;
}

/** Ethernet (+802.1Q) / IPv4 or IPv6 (no extension headers) / TCP, or undefined. */
function tcpFacts(frame: Buffer): TcpHeaderFacts | undefined {
  let off = 12;
  if (frame.length < off + 2) return undefined;
  let etherType = frame.readUInt16BE(off);
  while (etherType === 0x8100 && frame.length >= off + 6) {
    off += 4;
    etherType = frame.readUInt16BE(off);
  }
  off += 2;
  let ipEnd: number;
  let client: string;
  if (etherType === 0x0800 && frame.length >= off + 20) {
    if (frame[off + 9] !== 6 || (frame.readUInt16BE(off + 6) & 0x3fff) !== 0) return undefined;
    ipEnd = off + frame.readUInt16BE(off + 2);
    client = frame.subarray(off + 16, off + 20).toString('hex');
    off += (frame[off] & 0x0f) * 4;
  } else if (etherType === 0x86dd && frame.length >= off + 40) {
    if (frame[off + 6] !== 6) return undefined;
    ipEnd = off + 40 + frame.readUInt16BE(off + 4);
    client = frame.subarray(off + 24, off + 40).toString('hex');
    off += 40;
  } else {
    return undefined;
  }
  if (frame.length < off + 20 || ipEnd > frame.length) return undefined;
  const dataOffset = (frame[off + 12] >> 4) * 4;
  return {
    flowKey: `${frame.readUInt16BE(off)} ${client} ${frame.readUInt16BE(off + 2)}`,
    seq: frame.readUInt32BE(off + 4),
    flags: frame[off + 13],
    payloadLength: ipEnd - off - dataOffset,
  };
}

interface ReplicaProgress {
  isn: number | undefined;
  /** Relative sequence just past the last byte (or SYN/FIN) sent. */
  sentEnd: number;
  reset: boolean;
}

interface GatedFlow {
  primary: ReplicaProgress;
  backup: ReplicaProgress;
  held: { frame: Buffer; end: number; heldAtMs: number }[];
  diverged: boolean;
}

function advance(progress: ReplicaProgress, facts: TcpHeaderFacts): number | undefined {
  if (facts.flags & TCP_SYN) progress.isn = facts.seq;
  if (facts.flags & TCP_RST) progress.reset = true;
  if (progress.isn === undefined) return undefined;
  const end = seqDiff(progress.isn, facts.seq) + facts.payloadLength
    + (facts.flags & TCP_SYN ? 1 : 0) + (facts.flags & TCP_FIN ? 1 : 0);
  if (end > progress.sentEnd) progress.sentEnd = end;
  return end;
}

export class LabRelay {
  private readonly counts: LabRelayCounters = {
    fromClient: 0, toPrimary: 0, toBackup: 0, fromPrimary: 0, toClient: 0, fromBackup: 0, gated: 0, gateTimeouts: 0,
  };
  private readonly flows = new Map<string, GatedFlow>();
  private readonly gateTimeoutMs: number;
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ports: LabRelayPorts,
    private readonly translator: BackupTranslator = new BackupIngressTranslator(),
    options: LabRelayOptions = {},
  ) {
    this.gateTimeoutMs = options.gateTimeoutMs ?? 200;
  }

  start(): void {
    this.ports.client.onBatch((frames) => this.fromClient(frames));
    this.ports.primary.onBatch((frames) => this.fromPrimary(frames));
    this.ports.backup.onBatch((frames) => this.fromBackup(frames));
  }

  /** Releases every held frame and stops the gate's timer. */
  stop(): void {
    for (const flow of this.flows.values()) this.release(flow, true);
    this.ports.client.flush();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
  }

  counters(): LabRelayCounters {
    return { ...this.counts };
  }

  private flow(key: string): GatedFlow {
    let flow = this.flows.get(key);
    if (!flow) {
      flow = {
        primary: { isn: undefined, sentEnd: 0, reset: false },
        backup: { isn: undefined, sentEnd: 0, reset: false },
        held: [],
        diverged: false,
      };
      this.flows.set(key, flow);
    }
    return flow;
  }

  private sendToBackup(frames: Buffer[]): void {
    for (const frame of frames) {
      this.ports.backup.send(frame);
      this.counts.toBackup++;
    }
  }

  private toClient(frame: Buffer): void {
    this.ports.client.send(frame);
    this.counts.toClient++;
  }

  private release(flow: GatedFlow, all: boolean): void {
    while (flow.held.length > 0) {
      const head = flow.held[0];
      if (!all && !flow.diverged && !flow.backup.reset && head.end > flow.backup.sentEnd) break;
      flow.held.shift();
      this.toClient(head.frame);
    }
  }

  private fromClient(frames: readonly ReceivedFrame[]): void {
    for (const { frame } of frames) {
      this.counts.fromClient++;
      this.ports.primary.send(frame);
      this.counts.toPrimary++;
      this.sendToBackup(this.translator.translateForBackup(frame));
    }
    this.ports.primary.flush();
    this.ports.backup.flush();
  }

  private fromPrimary(frames: readonly ReceivedFrame[]): void {
    for (const { frame } of frames) {
      this.counts.fromPrimary++;
      this.sendToBackup(this.translator.observeVmFrame('primary', frame));
      const facts = this.gateTimeoutMs > 0 ? tcpFacts(frame) : undefined;
      if (!facts) {
        this.toClient(frame);
        continue;
      }
      const flow = this.flow(facts.flowKey);
      const end = advance(flow.primary, facts);
      const mustWait = end !== undefined && !flow.diverged && !flow.backup.reset
        && (flow.held.length > 0 || end > flow.backup.sentEnd);
      if (!mustWait) {
        this.toClient(frame);
        continue;
      }
      flow.held.push({ frame: Buffer.from(frame), end: end as number, heldAtMs: Date.now() });
      this.counts.gated++;
      this.armSweep();
    }
    this.ports.client.flush();
    this.ports.backup.flush();
  }

  private fromBackup(frames: readonly ReceivedFrame[]): void {
    for (const { frame } of frames) {
      this.counts.fromBackup++;
      this.sendToBackup(this.translator.observeVmFrame('backup', frame));
      const facts = this.gateTimeoutMs > 0 ? tcpFacts(frame) : undefined;
      if (!facts) continue;
      const flow = this.flow(facts.flowKey);
      advance(flow.backup, facts);
      this.release(flow, false);
    }
    this.ports.client.flush();
    this.ports.backup.flush();
  }

  private armSweep(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(5, Math.floor(this.gateTimeoutMs / 4)));
    this.sweepTimer.unref();
  }

  private sweep(): void {
    const now = Date.now();
    let anyHeld = false;
    for (const flow of this.flows.values()) {
      if (flow.held.length > 0 && now - flow.held[0].heldAtMs >= this.gateTimeoutMs) {
        flow.diverged = true;
        this.counts.gateTimeouts++;
        this.release(flow, true);
      }
      if (flow.held.length > 0) anyHeld = true;
    }
    this.ports.client.flush();
    if (!anyHeld && this.sweepTimer) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }
}
