/**
 * LabRelay: the smallest bridge that makes the lab's replicas both answer,
 * for recording fixtures. No comparison, no release gating.
 *
 *   client  ──┬──────────────────────────────► primary
 *             └─ translateForBackup ─────────► backup
 *   primary ──► client          (and observeVmFrame('primary'))
 *   backup  ──► dropped         (and observeVmFrame('backup'))
 *
 * Frames the translator releases from `observeVmFrame` go to the backup.
 * Every batch is flushed before the callback returns: the received frame is
 * a view of the source port's buffer and is sent by reference.
 */
import { PacketPort, ReceivedFrame } from '../io/port';
import { BackupIngressTranslator } from '../rewrite/backup-ingress';

export interface LabRelayPorts {
  readonly client: PacketPort;
  readonly primary: PacketPort;
  readonly backup: PacketPort;
}

export interface LabRelayCounters {
  fromClient: number;
  toPrimary: number;
  toBackup: number;
  fromPrimary: number;
  toClient: number;
  /** Backup output: observed, never forwarded (the client only hears the primary). */
  fromBackup: number;
}

/** What the relay needs from a backup-ingress translator. */
export interface BackupTranslator {
  observeVmFrame(role: 'primary' | 'backup', frame: Buffer): Buffer[];
  translateForBackup(frame: Buffer): Buffer[];
}

export class LabRelay {
  private readonly counts: LabRelayCounters = { fromClient: 0, toPrimary: 0, toBackup: 0, fromPrimary: 0, toClient: 0, fromBackup: 0 };

  constructor(
    private readonly ports: LabRelayPorts,
    private readonly translator: BackupTranslator = new BackupIngressTranslator(),
  ) {}

  start(): void {
    this.ports.client.onBatch((frames) => this.fromClient(frames));
    this.ports.primary.onBatch((frames) => this.fromPrimary(frames));
    this.ports.backup.onBatch((frames) => this.fromBackup(frames));
  }

  counters(): LabRelayCounters {
    return { ...this.counts };
  }

  private sendToBackup(frames: Buffer[]): void {
    for (const frame of frames) {
      this.ports.backup.send(frame);
      this.counts.toBackup++;
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
      this.ports.client.send(frame);
      this.counts.toClient++;
    }
    this.ports.client.flush();
    this.ports.backup.flush();
  }

  private fromBackup(frames: readonly ReceivedFrame[]): void {
    for (const { frame } of frames) {
      this.counts.fromBackup++;
      this.sendToBackup(this.translator.observeVmFrame('backup', frame));
    }
    this.ports.backup.flush();
  }
}
