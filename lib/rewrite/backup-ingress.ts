/**
 * BackupIngressTranslator: a self-contained translator of client frames for
 * the backup, with its own small flow table. The fixture recorder uses it
 * between real namespaces; the bridge uses the same pieces (flow state,
 * `translateForBackup`) inside its own per-flow state.
 *
 * In:  VM output frames (to learn each replica's ISN and TSval base),
 *      client frames.
 * Out: copies for the backup. Client frames of a flow whose backup delta is
 *      not known yet are held (at most MAX_HELD_PER_FLOW, oldest dropped and
 *      counted) and come out of `observeVmFrame` once it is.
 */
import { TcpFlag } from '../packet/constants';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { TcpOptions } from '../packet/tcp-options';
import { FlowTable } from '../flow/flow-table';
import { flowKeyOf } from '../flow/key';
import { TcpConnectionState, TcpEndpointState } from '../flow/tcp-replica';
import { learnFromSyn } from '../normalize/tcp';
import { refersToVmSpace, translateForBackup } from './ingress';

export const MAX_HELD_PER_FLOW = 64;

interface TranslatorFlow {
  tcp: TcpConnectionState;
  held: Buffer[];
}

export class BackupIngressTranslator {
  private readonly flows = new FlowTable<TranslatorFlow>(65536);
  private readonly frame = new DecodedFrame();
  private readonly opts = new TcpOptions();
  heldDropped = 0;
  translated = 0;

  /** Learn from a frame a VM sent. Returns held client frames that can now go to the backup. */
  observeVmFrame(role: 'primary' | 'backup', frameBytes: Buffer): Buffer[] {
    const f = decodeFrame(frameBytes, this.frame);
    if (f.error || f.l4 !== 'tcp' || f.fragment) return [];
    const flow = this.flows.getOrCreate(flowKeyOf(f, 'egress'), Date.now() * 1000, newFlow).state;
    const ep: TcpEndpointState = flow.tcp.replicas[role === 'primary' ? 0 : 1];
    if (f.tcp.flags & TcpFlag.SYN) learnFromSyn(f, ep, this.opts);
    if (flow.held.length === 0 || !flow.tcp.backupDeltaKnown) return [];
    const held = flow.held;
    flow.held = [];
    return held.map((b) => this.translate(b, flow.tcp));
  }

  /** A client frame: returns the copies to send to the backup now (possibly none: held). */
  translateForBackup(frameBytes: Buffer): Buffer[] {
    const f = decodeFrame(frameBytes, this.frame);
    if (f.error || f.l4 !== 'tcp' || f.fragment) return [Buffer.from(frameBytes)];
    const flow = this.flows.getOrCreate(flowKeyOf(f, 'ingress'), Date.now() * 1000, newFlow).state;
    if (f.tcp.flags & TcpFlag.SYN) learnFromSyn(f, flow.tcp.client, this.opts);
    if (refersToVmSpace(f) && (!flow.tcp.backupDeltaKnown || flow.held.length > 0)) {
      if (flow.held.length >= MAX_HELD_PER_FLOW) {
        flow.held.shift();
        this.heldDropped++;
      }
      flow.held.push(Buffer.from(frameBytes));
      return [];
    }
    return [this.translate(Buffer.from(frameBytes), flow.tcp)];
  }

  private translate(copy: Buffer, tcp: TcpConnectionState): Buffer {
    const f = decodeFrame(copy, this.frame);
    translateForBackup(f, tcp.seqDelta, tcp.tsDelta, this.opts);
    this.translated++;
    return copy;
  }
}

function newFlow(): TranslatorFlow {
  return { tcp: new TcpConnectionState(), held: [] };
}
