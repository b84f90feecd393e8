/**
 * Loads the AF_PACKET addon (native/afpacket.c, built by node-gyp from the
 * repository's binding.gyp into build/Release/shadowvm_afpacket.node; npm
 * builds it during `npm ci`).
 *
 * In:  nothing; the addon is looked for once, on first use, so importing
 *      this module never fails on a machine where it is not built.
 * Out: the addon's typed face, or an AfPacketAddonNotBuiltError that says
 *      what to install and what to run.
 */
import { loadNativeAddon } from './native-addon';
import { UserFacingError } from '../errors';

/** Where the addon's words sit in its shared typed arrays (given by the addon itself). */
export interface AfPacketLayout {
  readonly descStride: number;
  readonly desc: {
    readonly offset: number; readonly length: number; readonly flags: number;
    readonly vnetLength: number; readonly vnetChecksum: number; readonly sec: number; readonly nsec: number;
  };
  readonly flags: {
    readonly checksumPartial: number; readonly checksumValid: number; readonly vlanInserted: number;
    readonly vnetShift: number; readonly gsoShift: number;
  };
  readonly counters: {
    readonly rxFrames: number; readonly rxBytes: number; readonly txFrames: number; readonly txBytes: number;
    readonly rxDrops: number; readonly txErrors: number; readonly rxTruncated: number; readonly lastTxErrno: number;
    readonly breaths: number; readonly socketErrors: number; readonly lastSocketErrno: number;
    readonly rxVlanInserted: number; readonly spinBreaths: number; readonly sweepBreaths: number; readonly txQueued: number;
    readonly txWaitUs: number; readonly txWaitMaxUs: number; readonly txSyncUs: number; readonly txSyncMaxUs: number; readonly count: number;
  };
}

export interface AfPacketSocketOptions {
  /** Ring slots; 0 or absent: 8 MiB worth. Rounded up to whole ring blocks. */
  ringFrames?: number;
  /** Bytes per slot (multiple of 16); 0 or absent: room for the MTU (or a 64 KiB GSO frame with vnetHdr). */
  frameSize?: number;
  vnetHdr?: boolean;
  /** After each breath, keep looking at every open port's ring for this long (µs) before sleeping. */
  busyPollUs?: number;
  /** SO_BUSY_POLL on the socket (µs). Only helps where the device has NAPI busy polling. */
  socketBusyPollUs?: number;
  /** PACKET_QDISC_BYPASS: send straight to the driver, past the qdisc. */
  qdiscBypass?: boolean;
  /** Sends are copied and made by the env's send thread (see AfPacketPortOptions.sendThread). */
  sendThread?: boolean;
  /** A classic BPF program (struct sock_filter[] as bytes) attached before bind (see AfPacketPortOptions.filter). */
  filter?: Uint8Array;
  /**
   * A wake-up by this socket also takes the frames waiting in every other
   * open sweepOnWake socket's ring (in one callback scope) before libuv
   * polls again. Default false.
   */
  sweepOnWake?: boolean;
}

/** One AF_PACKET socket bound to one interface (see native/afpacket.c). */
export interface AfPacketSocket {
  /** The mmapped TPACKET_V2 receive ring; detached (empty) after close(). */
  readonly ring: ArrayBuffer;
  /** Per delivered frame, `layout.descStride` words; valid for the current batch. */
  readonly descriptors: Uint32Array;
  /** Counters the addon keeps (indices: `layout.counters`). */
  readonly counters: Float64Array;
  readonly ifindex: number;
  readonly mtu: number;
  readonly frameSize: number;
  readonly ringFrames: number;
  readonly blockSize: number;
  /** 10 with vnetHdr, else 0. */
  readonly vnetHdrLength: number;
  /** The largest frame a slot holds whole. */
  readonly maxFrameLength: number;
  readonly fd: number;
  /**
   * Deliver breaths from the event loop: onFrames(count, leaderFollows) is
   * called with `this` the socket; leaderFollows: a follower's batch, its
   * leader's call comes next (follow).
   */
  start(): void;
  stop(): void;
  /**
   * This socket and `leader` (another open socket of this thread) breathe as
   * one: both rings drained, this one's batch handed over first with
   * leaderFollows, then the leader's. Undone when either closes. With
   * `fanoutBound` (frames longer than this, counted from the network header,
   * are this socket's; the others the leader's), the two join one
   * PACKET_FANOUT_CBPF group so each frame is offered to one of them: true
   * if they did, false if not asked, else why not (they then read with
   * their own filters).
   */
  follow(leader: AfPacketSocket, fanoutBound?: number): boolean | string;
  /** Not started: give the previous batch back, take every waiting frame; returns the batch size. */
  poll(): number;
  /** sendmmsg of `frames[0..count)`; with vnetHdr, `vnetHdrs` holds count × 10 bytes (absent: zero headers). Returns frames sent. */
  send(frames: readonly Uint8Array[], count: number, vnetHdrs?: Uint8Array | null): number;
  /** Folds PACKET_STATISTICS drops into counters. */
  /** Folds the kernel's drop count in; with `drain` (default true), first waits for this port's queued sends. */
  updateStats(drain?: boolean): void;
  /** Whether a small flush may be sent inline for now (sendInlineFrames); false: every flush goes to the send thread. */
  setInline(on: boolean): void;
  close(): void;
}

/** A socket opened by `open()` and not yet made into a Socket (an opaque native handle). */
export type AfPacketOpenHandle = { readonly __afpacketOpenHandle: unique symbol };

export interface AfPacketAddon {
  /** With an interface name, opens on the calling thread; with a handle from `open`, wraps what it opened (options then unused). */
  readonly Socket: new (ifname: string | AfPacketOpenHandle, options: AfPacketSocketOptions, onFrames: (this: AfPacketSocket, count: number, leaderFollows: boolean) => void) => AfPacketSocket;
  /**
   * Opens the socket, its ring and its binding on libuv's thread pool (the
   * ring's setup waits for an RCU grace period in the kernel), then calls
   * back on this thread with a handle for `new Socket`, or the error the
   * constructor would have thrown.
   */
  open(ifname: string, options: AfPacketSocketOptions, callback: (err: Error | null, handle: AfPacketOpenHandle | undefined) => void): void;
  readonly layout: AfPacketLayout;
  readonly vnetHdrLength: number;
  /** Names the calling thread and sets its scheduling policy (see native/afpacket.c; lib/dataplane/scheduling.ts). */
  setThreadScheduling(name: string, policy: 'rr' | 'other', priority: number): { tid: number; errno: number };
  /** Sets the policy of another thread of this process; returns the errno, 0 when applied. */
  setTaskScheduling(tid: number, policy: 'rr' | 'other', priority: number): number;
}

/** The addon could not be loaded: not built, built for another Node, or not Linux. */
export class AfPacketAddonNotBuiltError extends UserFacingError {
  constructor(readonly searched: readonly string[], override readonly cause: unknown) {
    super(
      'the AF_PACKET addon is not built (or was built for another Node): install g++, make and python3 ' +
        '(Debian: apt-get install g++ make python3; the kernel headers come with libc6-dev) and run `npm rebuild` ' +
        `in the repository. Looked for: ${searched.join(', ')}. Cause: ${(cause as Error)?.message ?? String(cause)}`,
    );
    this.name = 'AfPacketAddonNotBuiltError';
  }
}

export function loadAfPacketAddon(): AfPacketAddon {
  return loadNativeAddon<AfPacketAddon>('shadowvm_afpacket.node', (searched, cause) => new AfPacketAddonNotBuiltError(searched, cause));
}
