/**
 * AbsentPort: the backup slot's port when the backup's interface is not
 * there at start (a restarted `shadowvm run` whose roles file says the pair
 * had no backup, or names one whose tap is gone). Nothing arrives on it;
 * what is sent to it is dropped and counted as tx errors. The bridge treats
 * the slot as a lost backup, asks the agent for a new one (`reprotect`), and
 * the agent's answer names the tap the bridge moves this slot to.
 */
import { BatchReceiver, PacketPort, PortStats, VirtioNetHeader, emptyPortStats } from './port';

export class AbsentPort implements PacketPort {
  private readonly counters: PortStats = emptyPortStats();

  constructor(readonly name: string) {}

  onBatch(_receiver: BatchReceiver): void { /* nothing ever arrives */ }

  send(_frame: Buffer, _vnet?: VirtioNetHeader): void {
    this.counters.txErrors++;
  }

  flush(): void { /* nothing queued */ }

  stats(): PortStats {
    return { ...this.counters };
  }

  async close(): Promise<void> { /* nothing open */ }
}
