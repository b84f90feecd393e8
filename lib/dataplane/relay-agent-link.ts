/**
 * A data-plane worker's agent link under `run --workers N`: the worker's
 * Bridge talks to it as to the UNIX socket's AgentLink, and it passes what
 * the bridge says to the main thread's coordinator (coordinator.ts), which
 * holds the one connection to the agent, and what the coordinator relays
 * back to the bridge's listener.
 *
 * `failover` is not passed on: the worker reports every role change
 * (Bridge's onRoleChange) and the coordinator tells the agent once, for
 * whichever worker saw the death first.
 */
import type { AgentSnapshot } from '../control/snapshot';
import type { AgentLinkCounters, AgentLinkLike, AgentLinkListener } from '../replicate/agent-client';
import type { HelloMessage } from '../replicate/agent-protocol';
import type { CheckpointReason } from '../replicate/replicator';
import type { AgentWord, FromWorker } from './protocol';

export class RelayAgentLink implements AgentLinkLike {
  readonly counters: AgentLinkCounters = {
    messagesIn: 0, messagesOut: 0, protocolErrors: 0, unknownMessages: 0, connectionsAccepted: 0, connectionsRefused: 0,
    heartbeatTimeouts: 0, helloTimeouts: 0, pendingEvicted: 0, refusedPeer: 0,
  };
  private hello: HelloMessage | null = null;
  private closed = false;

  constructor(private readonly send: (m: FromWorker) => void, private readonly listener: AgentLinkListener) {}

  get agent(): HelloMessage | null {
    return this.hello;
  }

  async listen(): Promise<void> {}

  async close(): Promise<void> {
    this.closed = true;
  }

  snapshot(): AgentSnapshot {
    const c = this.counters;
    return {
      connected: this.hello !== null,
      ...(this.hello ? { name: this.hello.name } : {}),
      messagesIn: c.messagesIn, messagesOut: c.messagesOut, protocolErrors: c.protocolErrors, heartbeatTimeouts: c.heartbeatTimeouts,
    };
  }

  sendCheckpoint(req: { epoch: number; reason: CheckpointReason; flow?: string }): boolean {
    return this.out({ type: 'to-agent', op: 'checkpoint', epoch: req.epoch, reason: req.reason, ...(req.flow !== undefined ? { flow: req.flow } : {}) });
  }

  sendFailover(): boolean {
    return this.hello !== null && !this.closed;
  }

  sendBackupAttached(epoch: number, port: string): boolean {
    if (!this.hello || this.hello.version < 2) return false;
    return this.out({ type: 'to-agent', op: 'backup-attached', epoch, port });
  }

  sendReprotect(epoch: number, backup?: string): boolean {
    return this.out({ type: 'to-agent', op: 'reprotect', epoch, ...(backup !== undefined ? { backup } : {}) });
  }

  /** What the coordinator relays from the agent. */
  receive(word: AgentWord): void {
    if (this.closed) return;
    this.counters.messagesIn++;
    const l = this.listener;
    switch (word.ev) {
      case 'connected':
        this.hello = word.hello;
        this.counters.connectionsAccepted++;
        l.connected(word.hello);
        return;
      case 'disconnected':
        if (!this.hello) return;
        this.hello = null;
        l.disconnected(word.why);
        return;
      case 'checkpoint-done': l.checkpointDone(word.m); return;
      case 'checkpoint-failed': l.checkpointFailed(word.m); return;
      case 'primary-down': l.primaryDown(word.m); return;
      case 'backup-down': l.backupDown(word.m); return;
    }
  }

  private out(m: FromWorker): boolean {
    if (!this.hello || this.closed) return false;
    this.counters.messagesOut++;
    this.send(m);
    return true;
  }
}
