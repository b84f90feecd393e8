/**
 * Ingress translation for the backup. The client speaks in the primary's
 * sequence space (it only ever saw the primary's output); the backup needs
 * its own: ACK, SACK block edges (RFC 2018) and the TS echo (RFC 7323 TSecr)
 * are shifted by the backup's deltas. The client's own sequence numbers and
 * TSval are the same for both replicas and stay.
 *
 * In:  a decoded client TCP frame, the deltas, a copy to write into.
 * Out: the copy, translated, checksum patched incrementally (RFC 1624).
 */
import { TcpFlag } from '../packet/constants';
import { DecodedFrame } from '../packet/frame';
import { rewriteTcp32 } from '../packet/l4-checksum';
import { TcpOptions, readTcpOptions } from '../packet/tcp-options';

/** True when a client frame carries anything in the VM's sequence or TS space. */
export function refersToVmSpace(f: DecodedFrame): boolean {
  return (f.tcp.flags & TcpFlag.ACK) !== 0;
}

/**
 * Translates `f` in place (call it on a copy: `f.rebind(copy)`). Returns
 * false when the options are malformed; the ACK is translated regardless.
 */
export function translateForBackup(
  f: DecodedFrame,
  seqDelta: number,
  tsDelta: number,
  opts: TcpOptions,
  checksumIsPartial = false,
): boolean {
  const tcp = f.tcp;
  if (!(tcp.flags & TcpFlag.ACK)) return true;
  if (seqDelta !== 0) rewriteTcp32(f, tcp.offset + 8, (tcp.ack + seqDelta) >>> 0, checksumIsPartial);
  if (f.payloadOffset === tcp.offset + 20) return true; // no options
  if (seqDelta === 0 && tsDelta === 0) return true;
  const ok = readTcpOptions(f, opts);
  if (!ok) return false;
  if (seqDelta !== 0 && opts.sackOffset >= 0) {
    for (let i = 0; i < opts.sackBlocks * 2; i++) {
      const at = opts.sackOffset + 4 * i;
      rewriteTcp32(f, at, (f.dv.getUint32(at) + seqDelta) >>> 0, checksumIsPartial);
    }
  }
  if (tsDelta !== 0 && opts.tsOffset >= 0) {
    const at = opts.tsOffset + 4;
    rewriteTcp32(f, at, (f.dv.getUint32(at) + tsDelta) >>> 0, checksumIsPartial);
  }
  return true;
}
