/**
 * AfPacketPort: a PacketPort on a live interface through one AF_PACKET
 * socket (the native addon in native/afpacket.c). The live bridge's default.
 *
 *            ┌───────────────────────── AfPacketPort ──────────────────────────┐
 *   wire ──► │ TPACKET_V2 ring (mmapped) ─► one batch of ring views per breath │ ──► onBatch
 *   wire ◄── │ sendmmsg ◄── flush ◄── send queue (references + vnet headers)   │ ◄── send
 *            └─────────────────────────────────────────────────────────────────┘
 *
 * In:  every frame that arrives on the interface, never the frames sent on it
 *      (PACKET_IGNORE_OUTGOING: not ours, not the host's). The socket is bound
 *      before the constructor returns, so the first frame after it is kept;
 *      frames wait in the ring until `onBatch` is called. A breath delivers every
 *      frame in the ring as one batch. A wake-up of the event loop (libuv poll
 *      on the socket) is this port's breath, then (sweepOnWake) one breath of
 *      each open port whose ring holds frames, before libuv polls again. VLAN tags the kernel moved to the ring's aux
 *      fields are put back into the frame. A frame larger than a ring slot is
 *      not delivered: it is counted in `rxDrops` (and `rxTruncated`).
 * Out: frames queued by `send` go out in one sendmmsg() on `flush`, when
 *      `maxQueuedFrames` are queued, and at the end of every breath of any
 *      AfPacketPort (so a frame forwarded from a ring leaves before its slot
 *      goes back to the kernel). `send` keeps a reference, not a copy: the
 *      frame must not change before it is flushed.
 *
 * Zero-copy contract: `frame` is a view of the ring. It is valid only during
 * the onBatch callback (the slots go back to the kernel when it returns); a
 * stage that keeps a frame copies it.
 *
 * vnetHdr: the socket exchanges a virtio-net header with each frame, so
 * offloads can stay on. Received frames then carry `vnet`: GSO super-frames
 * (up to 64 KiB, `gsoType`/`gsoSize`) and frames whose checksum is partial
 * (`flags & VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum field holds only the
 * pseudo-header sum; `completePartialChecksum` finishes it). Pass the header
 * back to `send(frame, vnet)` and the kernel segments and checksums on the
 * way out. Without a header, a zero header (nothing to do) is sent. Ports
 * that forward to each other should agree on vnetHdr: a super-frame or a
 * partial checksum handed to a port without it is refused (EMSGSIZE) or
 * leaves with a broken checksum.
 *
 * Counters: rxFrames/rxBytes (delivered), rxDrops (ring full:
 * PACKET_STATISTICS, plus truncated), txFrames/txBytes, txErrors (refused by
 * the kernel, or queue full after a short wait, or sent after close).
 */
import { constants } from 'node:os';
import { finishChecksum, onesSum } from '../packet/checksum';
import { AfPacketAddon, AfPacketOpenHandle, AfPacketSocket, AfPacketSocketOptions, loadAfPacketAddon } from './afpacket-native';
import { BatchReceiver, PacketPort, PortStats, ReceivedFrame, VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHeader } from './port';
import { UserFacingError } from '../errors';

export { VIRTIO_NET_HDR_F_NEEDS_CSUM };
export type { VirtioNetHeader };

export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;


export interface AfPacketFrame extends ReceivedFrame {
  /** Present when the port was opened with `vnetHdr`. */
  readonly vnet?: VirtioNetHeader;
}

export interface AfPacketPortOptions {
  /** Receive ring slots. Default: 8 MiB worth of slots (rounded up to whole ring blocks). */
  ringFrames?: number;
  /** Bytes per ring slot. Default: room for an MTU-sized frame (a 64 KiB GSO frame with `vnetHdr`). */
  frameSize?: number;
  /** Exchange a virtio-net header with every frame (PACKET_VNET_HDR). Default false. */
  vnetHdr?: boolean;
  /**
   * After each breath, keep polling every open AfPacketPort's ring for this
   * many µs before sleeping in epoll (blocks the event loop that long).
   * The largest value among open ports applies. Default 0.
   */
  busyPollUs?: number;
  /** PACKET_QDISC_BYPASS on sends. Default false. */
  qdiscBypass?: boolean;
  /** SO_BUSY_POLL (µs); only devices with NAPI busy polling honour it. Default 0. */
  socketBusyPollUs?: number;
  /** Frames queued by `send` before a flush is forced. Default 1024. */
  maxQueuedFrames?: number;
  /**
   * One wake-up, every ring: when this port wakes the event loop, the frames
   * already waiting on every other open port with sweepOnWake (typically the
   * VMs' answers to the client frame this breath just sent them: a veth
   * runs its peer's stack inside the send) get their breaths at once, before
   * libuv polls again, instead of one epoll_pwait and one loop turn later.
   * Default true; false is the older one-breath-per-epoll-event path.
   */
  sweepOnWake?: boolean;
  /**
   * Send from a thread of its own: a flush copies its frames into a staging
   * area and returns; one thread per data plane makes the sendmmsg() calls,
   * in order. A send into a veth runs the receiving namespace's stack inside
   * the syscall (its TCP, and what its answers trigger); on the event loop
   * that is time no ring is read. Costs one copy per frame. Default false
   * here; `shadowvm run` and the lab turn it on without virtio-net headers
   * (lib/cli/ports.ts; `run --send-thread auto|on|off`).
   */
  sendThread?: boolean;
  /**
   * With sendThread: a flush of at most this many frames, made while the
   * thread has nothing queued, is sent by the caller itself (no hand-off; a
   * veth peer's answer is in its ring for the same wake-up). Default 8; 0:
   * every send through the thread, so the peer's stack never runs on the
   * data plane. `setInlineSends(false)` suspends it (the bridge's rate gate).
   */
  sendInlineFrames?: number;
  /**
   * Take only the frames this classic BPF program accepts (SO_ATTACH_FILTER,
   * attached before the socket is bound: nothing else ever reaches the ring).
   * The data plane's shards use it (lib/dataplane/shard.ts). Default: none.
   */
  filter?: Uint8Array;
}

export interface AfPacketPortStats extends PortStats {
  /** Frames larger than a ring slot (also in rxDrops). */
  rxTruncated: number;
  /** Breaths (onBatch calls) so far, and how many of them the busy-poll spin and the wake-up sweep found. */
  breaths: number;
  spinBreaths: number;
  sweepBreaths: number;
  /** Frames handed to the send thread (sendThread); the others were sent by the data plane itself. */
  txQueued: number;
  /** Time (µs) the data plane waited for room in the send thread's stage, in all and the longest once. */
  txWaitUs: number;
  txWaitMaxUs: number;
  /** Time (µs) the data plane spent in sends it made itself, in all and the longest once. */
  txSyncUs: number;
  txSyncMaxUs: number;
  /** Socket errors reported by the kernel (e.g. ENETDOWN when the interface goes down). */
  socketErrors: number;
  /** errno text of the last send failure / socket error, '' if none. */
  lastTxError: string;
  lastSocketError: string;
}

/** Why an AF_PACKET port could not be opened; names the interface and the errno text. */
export class AfPacketPortError extends UserFacingError {
  constructor(
    readonly ifname: string,
    /** errno name (ENODEV, EPERM, ENETDOWN…), '' if none. */
    readonly code: string,
    readonly errnoText: string,
    readonly syscall: string,
    detail: string,
  ) {
    super(`AF_PACKET port ${ifname}: ${detail}${syscall ? ` (${syscall}: ${code ? `${code}, ` : ''}${errnoText})` : ''}`);
    this.name = 'AfPacketPortError';
  }
}

export class AfPacketNoSuchInterfaceError extends AfPacketPortError {
  constructor(ifname: string, code: string, errnoText: string, syscall: string) {
    super(ifname, code, errnoText, syscall, 'no such interface');
    this.name = 'AfPacketNoSuchInterfaceError';
  }
}

export class AfPacketPermissionError extends AfPacketPortError {
  constructor(ifname: string, code: string, errnoText: string, syscall: string) {
    super(ifname, code, errnoText, syscall, 'opening a packet socket needs root or CAP_NET_RAW');
    this.name = 'AfPacketPermissionError';
  }
}

export class AfPacketInterfaceDownError extends AfPacketPortError {
  constructor(ifname: string, code: string, errnoText: string, syscall: string) {
    super(ifname, code, errnoText, syscall, `interface is down (ip link set dev ${ifname} up)`);
    this.name = 'AfPacketInterfaceDownError';
  }
}

interface NativeError extends Error { code?: string; errnoText?: string; syscall?: string }

/** Maps an error thrown by the addon (with errno name, syscall and errno text) to its typed error. */
export function toAfPacketPortError(ifname: string, err: unknown): Error {
  const e = err as NativeError;
  // Not instanceof Error: the addon's errors come from the main realm (jest runs tests in another).
  if (typeof e !== 'object' || e === null || typeof e.syscall !== 'string') return err as Error;
  const code = e.code ?? '';
  const text = e.errnoText ?? '';
  if (code === 'ENODEV' || code === 'ENXIO') return new AfPacketNoSuchInterfaceError(ifname, code, text, e.syscall);
  if (code === 'EPERM' || code === 'EACCES') return new AfPacketPermissionError(ifname, code, text, e.syscall);
  if (code === 'ENETDOWN') return new AfPacketInterfaceDownError(ifname, code, text, e.syscall);
  const detail = e.message.startsWith(`${ifname}: `) ? e.message.slice(ifname.length + 2) : e.message;
  return new AfPacketPortError(ifname, code, text, e.syscall, detail);
}

/**
 * Finishes a checksum left partial by offload (VIRTIO_NET_HDR_F_NEEDS_CSUM):
 * the field at csumStart + csumOffset holds the pseudo-header sum; the
 * checksum is the complement of the sum from csumStart to the end. For a
 * frame that is not a GSO super-frame (those are checksummed per segment by
 * whoever segments them). Returns false if there was nothing it could do.
 */
export function completePartialChecksum(frame: Buffer, vnet: VirtioNetHeader): boolean {
  if (!(vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) || vnet.gsoType !== VIRTIO_NET_HDR_GSO_NONE) return false;
  const at = vnet.csumStart + vnet.csumOffset;
  if (at + 2 > frame.length) return false;
  const checksum = finishChecksum(onesSum(frame, vnet.csumStart, frame.length - vnet.csumStart));
  // RFC 768: a UDP checksum that computes to 0 is sent as 0xffff (0 means "none"); same for TCP in one's complement.
  frame.writeUInt16BE(checksum === 0 ? 0xffff : checksum, at);
  return true;
}

/** Ports with queued sends: all flushed at the end of every breath, before ring slots go back. */
const portsWithQueuedSends = new Set<AfPacketPort>();

function flushQueuedSends(): void {
  for (const port of portsWithQueuedSends) port.flush();
}

function socketOptions(options: AfPacketPortOptions): AfPacketSocketOptions {
  return {
    ringFrames: options.ringFrames ?? 0,
    frameSize: options.frameSize ?? 0,
    vnetHdr: options.vnetHdr ?? false,
    busyPollUs: options.busyPollUs ?? 0,
    qdiscBypass: options.qdiscBypass ?? false,
    socketBusyPollUs: options.socketBusyPollUs ?? 0,
    sweepOnWake: options.sweepOnWake ?? true,
    sendThread: options.sendThread ?? false,
    ...(options.sendInlineFrames !== undefined ? { sendInlineFrames: options.sendInlineFrames } : {}),
    ...(options.filter ? { filter: options.filter } : {}),
  };
}

const ZERO_VNET: VirtioNetHeader = { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };

export class AfPacketPort implements PacketPort {
  readonly name: string;
  /** Ring frames carry the kernel's arrival timestamp (tp_sec/tp_nsec, CLOCK_REALTIME). */
  readonly arrivalTimes = true;
  /** What the socket was opened with (after defaults and rounding). */
  readonly ring: { readonly frames: number; readonly frameSize: number; readonly blockSize: number; readonly maxFrameLength: number };
  readonly mtu: number;
  readonly vnetHdr: boolean;
  private readonly addon: AfPacketAddon;
  private readonly socket: AfPacketSocket;
  private readonly ringView: Buffer;
  private readonly descriptors: Uint32Array;
  private readonly counters: Float64Array;
  private readonly sendQueue: Buffer[] = [];
  private readonly maxQueuedFrames: number;
  /** count × 10 bytes of virtio-net headers, one per queued frame (vnetHdr only). */
  private readonly sendVnet: Uint8Array | undefined;
  private readonly sendVnetView: DataView | undefined;
  private receiver: BatchReceiver | undefined;
  /** The port this one follows (`follow`), and a follower's batch waiting for this port's breath. */
  private leader: AfPacketPort | undefined;
  private followerFrames: AfPacketFrame[] | undefined;
  private followerSubUs: number[] = [];
  /** Per frame of the current batch: its arrival time's nanoseconds below the microsecond (kept only by the ports of a pair). */
  private subUs: number[] = [];
  /** Part of a pair (`follow`): batches may be merged, so `frames` keeps `subUs`. */
  private paired = false;
  private closed = false;
  private sentAfterClose = 0;

  /**
   * Opens the port at once: the calling thread waits for the kernel's ring
   * setup (an RCU grace period, tens of ms under load). `AfPacketPort.open`
   * waits on libuv's thread pool instead.
   */
  constructor(ifname: string, options: AfPacketPortOptions = {}, opened?: AfPacketOpenHandle) {
    this.name = ifname;
    this.addon = loadAfPacketAddon();
    this.vnetHdr = options.vnetHdr ?? false;
    this.maxQueuedFrames = Math.max(1, options.maxQueuedFrames ?? 1024);
    try {
      this.socket = new this.addon.Socket(opened ?? ifname, socketOptions(options), (count, leaderFollows) => this.deliver(count, leaderFollows));
    } catch (err) {
      throw toAfPacketPortError(ifname, err);
    }
    this.ringView = Buffer.from(this.socket.ring);
    this.descriptors = this.socket.descriptors;
    this.counters = this.socket.counters;
    this.mtu = this.socket.mtu;
    this.ring = {
      frames: this.socket.ringFrames,
      frameSize: this.socket.frameSize,
      blockSize: this.socket.blockSize,
      maxFrameLength: this.socket.maxFrameLength,
    };
    if (this.vnetHdr) {
      this.sendVnet = new Uint8Array(this.maxQueuedFrames * this.addon.vnetHdrLength);
      this.sendVnetView = new DataView(this.sendVnet.buffer);
    }
  }

  /**
   * Opens the port without blocking the calling thread: the socket, its ring
   * and its binding are made on libuv's thread pool, and only the wrapping
   * runs here. The port is bound when the promise resolves: frames that
   * arrived since wait in its ring. Rejects with the same typed errors as
   * the constructor.
   */
  static open(ifname: string, options: AfPacketPortOptions = {}): Promise<AfPacketPort> {
    const addon = loadAfPacketAddon();
    return new Promise((resolve, reject) => {
      try {
        addon.open(ifname, socketOptions(options), (err, handle) => {
          if (err || !handle) {
            reject(toAfPacketPortError(ifname, err ?? new Error('open: no handle')));
            return;
          }
          try {
            resolve(new AfPacketPort(ifname, options, handle));
          } catch (e) {
            reject(e);
          }
        });
      } catch (e) {
        reject(toAfPacketPortError(ifname, e));
      }
    });
  }

  /**
   * One breath of this port: `count` descriptors are filled; the slots go
   * back when this returns. `leaderFollows`: this port follows another
   * (`follow`) and the leader's breath comes next, in the same native call:
   * the batch waits for it (its slots stay taken until then).
   */
  private deliver(count: number, leaderFollows = false): void {
    const frames = this.frames(count);
    const leader = this.leader;
    if (leaderFollows && leader) {
      leader.followerFrames = frames;
      leader.followerSubUs = this.subUs;
      return;
    }
    let batch = frames;
    const early = this.followerFrames;
    if (early) {
      batch = mergeByArrival(early, this.followerSubUs, frames, this.subUs);
      this.followerFrames = undefined;
    }
    try {
      this.receiver?.(batch);
    } finally {
      flushQueuedSends();
    }
  }

  /** The frames of the current batch; their arrival times' nanoseconds below the microsecond go to `subUs`. */
  private frames(count: number): AfPacketFrame[] {
    const { descStride, desc, flags: f } = this.addon.layout;
    const d = this.descriptors;
    const ring = this.ringView;
    const frames: AfPacketFrame[] = new Array(count);
    const sub = this.subUs;
    const paired = this.paired;
    if (paired) sub.length = count;
    for (let i = 0, at = 0; i < count; i++, at += descStride) {
      const offset = d[at + desc.offset];
      const frame = ring.subarray(offset, offset + d[at + desc.length]);
      const nsec = d[at + desc.nsec];
      const timeUs = d[at + desc.sec] * 1_000_000 + Math.floor(nsec / 1000);
      if (paired) sub[i] = nsec % 1000;
      if (this.vnetHdr) {
        const flags = d[at + desc.flags];
        const lengths = d[at + desc.vnetLength];
        const checksum = d[at + desc.vnetChecksum];
        const vnet: VirtioNetHeader = {
          flags: (flags >>> f.vnetShift) & 0xff,
          gsoType: (flags >>> f.gsoShift) & 0xff,
          hdrLen: lengths & 0xffff,
          gsoSize: lengths >>> 16,
          csumStart: checksum & 0xffff,
          csumOffset: checksum >>> 16,
        };
        frames[i] = { frame, timeUs, vnet };
      } else {
        frames[i] = { frame, timeUs };
      }
    }
    return frames;
  }

  /**
   * From now on this port and `leader` (another AfPacketPort on this
   * thread, typically a second ring of the same interface) breathe as one:
   * whichever wakes, both rings are drained and the leader's receiver gets
   * one batch of the frames of both, in the order they arrived (kernel
   * timestamps). This port's own receiver then only sees breaths the
   * leader could not take part in (not started, or closed). Undone when
   * either port closes. `fanoutBound`: see AfPacketSocket.follow; returns
   * whether the two sockets share a fanout group, or why not.
   */
  follow(leader: AfPacketPort, fanoutBound?: number): boolean | string {
    const joined = this.socket.follow(leader.socket, fanoutBound);
    this.leader = leader;
    this.paired = leader.paired = true;
    return joined;
  }

  onBatch(receiver: BatchReceiver): void {
    this.receiver = receiver;
    if (!this.closed) this.socket.start();
  }

  /**
   * Queues `frame` (by reference). With vnetHdr, `vnet` is the header to send
   * with it (typically the one it was received with); absent: no offload.
   */
  send(frame: Buffer, vnet?: VirtioNetHeader): void {
    if (this.closed) {
      this.sentAfterClose++;
      return;
    }
    const i = this.sendQueue.length;
    this.sendQueue.push(frame);
    if (this.sendVnetView) {
      const h = vnet ?? ZERO_VNET;
      const at = i * 10;
      const v = this.sendVnetView;
      // struct virtio_net_hdr, little-endian (what PACKET_VNET_HDR uses on little-endian hosts).
      v.setUint8(at, h.flags);
      v.setUint8(at + 1, h.gsoType);
      v.setUint16(at + 2, h.hdrLen, true);
      v.setUint16(at + 4, h.gsoSize, true);
      v.setUint16(at + 6, h.csumStart, true);
      v.setUint16(at + 8, h.csumOffset, true);
    }
    if (i === 0) portsWithQueuedSends.add(this);
    if (this.sendQueue.length >= this.maxQueuedFrames) this.flush();
  }

  flush(): void {
    portsWithQueuedSends.delete(this);
    const count = this.sendQueue.length;
    if (count === 0) return;
    try {
      this.socket.send(this.sendQueue, count, this.sendVnet);
    } finally {
      this.sendQueue.length = 0;
    }
  }

  setInlineSends(on: boolean): void {
    if (!this.closed) this.socket.setInline(on);
  }

  stats(settled = true): AfPacketPortStats {
    if (!this.closed) this.socket.updateStats(settled);
    const c = this.counters;
    const i = this.addon.layout.counters;
    return {
      rxFrames: c[i.rxFrames],
      rxBytes: c[i.rxBytes],
      txFrames: c[i.txFrames],
      txBytes: c[i.txBytes],
      rxDrops: c[i.rxDrops] + c[i.rxTruncated],
      txErrors: c[i.txErrors] + this.sentAfterClose,
      rxTruncated: c[i.rxTruncated],
      breaths: c[i.breaths],
      spinBreaths: c[i.spinBreaths],
      sweepBreaths: c[i.sweepBreaths],
      txQueued: c[i.txQueued],
      txWaitUs: c[i.txWaitUs],
      txWaitMaxUs: c[i.txWaitMaxUs],
      txSyncUs: c[i.txSyncUs],
      txSyncMaxUs: c[i.txSyncMaxUs],
      socketErrors: c[i.socketErrors],
      lastTxError: errnoName(c[i.lastTxErrno]),
      lastSocketError: errnoName(c[i.lastSocketErrno]),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.receiver = undefined;
    this.leader = undefined;
    this.followerFrames = undefined;
    this.socket.close();
  }
}

/**
 * Two batches, each in arrival order, as one in arrival order (time, then
 * the nanoseconds below it); on a tie the second batch's frame first.
 */
export function mergeByArrival<T extends ReceivedFrame>(a: readonly T[], aSub: readonly number[], b: readonly T[], bSub: readonly number[]): T[] {
  if (a.length === 0) return b as T[];
  if (b.length === 0) return a as T[];
  const out: T[] = new Array(a.length + b.length);
  let i = 0, j = 0, k = 0;
  while (i < a.length && j < b.length) {
    const ta = a[i].timeUs, tb = b[j].timeUs;
    out[k++] = ta < tb || (ta === tb && (aSub[i] ?? 0) < (bSub[j] ?? 0)) ? a[i++] : b[j++];
  }
  while (i < a.length) out[k++] = a[i++];
  while (j < b.length) out[k++] = b[j++];
  return out;
}

function errnoName(errno: number): string {
  if (!errno) return '';
  const table = constants.errno as Record<string, number>;
  return Object.keys(table).find((k) => table[k] === errno) ?? `errno ${errno}`;
}
