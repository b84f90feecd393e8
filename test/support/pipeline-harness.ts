/** A ShadowPipeline wired to arrays, and an established connection's handshake: for pipeline unit tests. */
import { ShadowPipeline, makePipelineConfig, PipelineConfig } from '../../lib/pipeline';
import { BACKUP, PRIMARY } from '../../lib/compare';
import { CheckpointRequest } from '../../lib/replicate';
import { tcpFrame, TcpSpec } from './frames';

export const C = 1000; // client ISN
export const P = 5000; // primary ISN
export const B = 900_000; // backup ISN
export const SYN_OPTS = { mss: 1460, ws: 7, sackOk: true, ts: [111, 0] as [number, number] };

export type Harness = ReturnType<typeof harness>;

export function harness(partial: Partial<PipelineConfig> = {}, agent = true) {
  const out = { primary: [] as Buffer[], backup: [] as Buffer[], client: [] as Buffer[], checkpoints: [] as CheckpointRequest[] };
  const logs: string[] = [];
  /** Every log line's fields, by event. */
  const logged: { event: string; fields: Record<string, unknown> }[] = [];
  const p = new ShadowPipeline(makePipelineConfig(partial), {
    toReplica: (slot, f) => (slot === 0 ? out.primary : out.backup).push(Buffer.from(f)),
    toClient: (f) => out.client.push(Buffer.from(f)),
    sendCheckpoint: (r) => out.checkpoints.push(r),
    log: (_l, event, fields) => {
      logs.push(event);
      logged.push({ event, fields: fields ?? {} });
    },
  }, 0, agent);
  return { p, out, logs, logged };
}

export const fromClient = (s: TcpSpec) => tcpFrame({ from: 'client', ...s });
export const fromVm = (s: TcpSpec) => tcpFrame({ from: 'vm', ...s });
export const ackOf = (f: Buffer) => f.readUInt32BE(14 + 20 + 8);
export const seqOf = (f: Buffer) => f.readUInt32BE(14 + 20 + 4);

/** Client SYN, both SYN-ACKs, client ACK: an established connection. */
export function handshake(h: Harness, t = 1) {
  h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), t);
  h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } }), t + 1);
  h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } }), t + 2);
  h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A' }), t + 3);
}
