/**
 * Link state of this network namespace's interfaces, pushed by the kernel
 * (rtnetlink link events through native/linkwatch.c), never polled: how the
 * bridge learns within milliseconds that a port lost carrier.
 *
 * In:  RTM_NEWLINK/RTM_DELLINK messages, one batch per event-loop wake-up,
 *      plus a dump of every link at open() (and again after an overrun).
 * Out: per interface name, a LinkEvent to that name's listeners whenever
 *      carrier, up, operState, deleted (or the ifindex behind the name)
 *      changed from the last known state, in kernel order; state(name) for
 *      the last known state.
 * Counts: events (link messages from the kernel, dumps included), overruns
 *      (the kernel dropped messages for us: we re-dumped), malformed
 *      (messages skipped).
 *
 * Time: LinkEvent.monoUs is on monotonicUs()'s base (lib/clock.ts): the addon
 * stamps CLOCK_MONOTONIC at receipt, and the offset between the two clocks is
 * measured once per process.
 *
 * The addon is looked for on first use, like the AF_PACKET one
 * (afpacket-native.ts): importing this module never fails where it is not built.
 */
import { loadNativeAddon } from './native-addon';
import { clockOffsetUs } from '../clock';
import { UserFacingError } from '../errors';

export interface LinkEvent {
  ifname: string;
  ifindex: number;
  /** IFLA_CARRIER (IFF_LOWER_UP on kernels without it); false once deleted. Some drivers keep carrier while admin-down: check `up` too. */
  carrier: boolean;
  /** IFF_UP (administratively up); false once deleted. */
  up: boolean;
  /** IFLA_OPERSTATE (RFC 2863): 'up', 'down', 'lowerlayerdown', 'dormant', 'testing', 'notpresent', 'unknown'. */
  operState: string;
  deleted: boolean;
  /** When the message that said so was received, on monotonicUs()'s base (lib/clock.ts). */
  monoUs: number;
}

export interface LinkWatchOptions {
  /** Socket receive buffer (SO_RCVBUF(FORCE)); default 4 MiB. Small values exist for overrun tests. */
  receiveBufferBytes?: number;
}

/** One link message as the addon hands it over (monoUs on CLOCK_MONOTONIC). */
export interface NativeLinkEvent {
  readonly ifindex: number;
  readonly ifname: string;
  readonly up: boolean;
  readonly lowerUp: boolean;
  readonly running: boolean;
  readonly operState: string;
  readonly carrier: boolean;
  readonly deleted: boolean;
  /** The RTM_GETLINK dump this message answers (a new number: a new dump began); 0 for a notification. */
  readonly dumpSeq: number;
  readonly monoUs: number;
}

export interface NativeLinkWatcherStats {
  readonly events: number;
  readonly overruns: number;
  readonly malformed: number;
  readonly dumps: number;
  readonly dumpErrors: number;
  readonly wakeups: number;
}

/** The addon's watcher (native/linkwatch.c). */
export interface NativeLinkWatcher {
  /** The receive buffer the kernel granted (it doubles what is asked). */
  readonly receiveBufferBytes: number;
  readonly fd: number;
  /** Before start(): blocks until a consistent dump of every link is read. */
  dump(timeoutMs: number): { events: NativeLinkEvent[]; dumpDone: boolean };
  /** Batches from the event loop (the handle is unref'd: it never keeps the process alive). */
  start(): void;
  stats(): NativeLinkWatcherStats;
  close(): void;
}

export interface LinkWatchAddon {
  readonly Watcher: new (
    onBatch: (events: NativeLinkEvent[], dumpDone: boolean) => void,
    options?: LinkWatchOptions,
  ) => NativeLinkWatcher;
  /** CLOCK_MONOTONIC now, µs: the clock of NativeLinkEvent.monoUs. */
  monotonicNowUs(): number;
  /** The addon's parser on any bytes, as one datagram from the kernel (for tests). */
  parseMessages(bytes: Uint8Array): { events: NativeLinkEvent[]; malformed: number };
}

/** The addon could not be loaded: not built, built for another Node, or not Linux. */
export class LinkWatchAddonNotBuiltError extends UserFacingError {
  constructor(readonly searched: readonly string[], override readonly cause: unknown) {
    super(
      'the link-watch addon (native/linkwatch.c) is not built (or was built for another Node): install g++, make and python3 ' +
        '(Debian: apt-get install g++ make python3) and run `npm rebuild` (or scripts/install-deps.sh) ' +
        `in the repository. Looked for: ${searched.join(', ')}. Cause: ${(cause as Error)?.message ?? String(cause)}`,
    );
    this.name = 'LinkWatchAddonNotBuiltError';
  }
}

export function loadLinkWatchAddon(): LinkWatchAddon {
  return loadNativeAddon<LinkWatchAddon>('shadowvm_linkwatch.node', (searched, cause) => new LinkWatchAddonNotBuiltError(searched, cause));
}

let offsetToMonotonicUs: number | undefined;

/** CLOCK_MONOTONIC minus monotonicUs(): constant for the process, measured once. */
function clockMonotonicOffsetUs(addon: LinkWatchAddon): number {
  offsetToMonotonicUs ??= clockOffsetUs(() => addon.monotonicNowUs());
  return offsetToMonotonicUs;
}

/** How long open() waits for the kernel's dump of every link. */
const DUMP_TIMEOUT_MS = 5000;
/** Deleted interfaces whose last state is remembered for state(); older ones are forgotten. */
const DELETED_REMEMBERED = 256;

type Listener = (ev: LinkEvent) => void;

/**
 * One rtnetlink socket for the whole namespace; listeners per interface name.
 * A listener hears of an interface only when carrier, up, operState, deleted
 * or the ifindex behind the name changed from the last known state, in the
 * kernel's order, on one batch per wake-up. Events are frozen: state() hands
 * out the same objects. A rename is a deletion under the old name and a new
 * interface under the new one. After an overrun the re-dump brings every
 * state up to date, and interfaces it no longer lists are reported deleted.
 * A throwing listener does not stop the others; its error is rethrown (as an
 * uncaught exception) once the batch is done.
 */
export class LinkWatcher {
  private readonly states = new Map<string, LinkEvent>();
  /** ifindex → the name it had last: renames and vanished links are seen by index. */
  private readonly names = new Map<number, string>();
  private readonly listeners = new Map<string, Set<Listener>>();
  /** Deleted names, oldest deletion first (for the bound on remembered deletions). */
  private readonly deletedNames = new Set<string>();
  /**
   * ifindexes heard of since the current dump's first answer: whatever the
   * dump did not mention and no notification since spoke of is gone. (The
   * kernel builds a dump chunk when it queues it, so what was queued before
   * the first answer is older than the dump, and what follows is newer.)
   */
  private seenDuringDump: Set<number> | undefined;
  private dumpSeq = 0;
  private closed = false;

  private constructor(private readonly native: NativeLinkWatcher, private readonly offsetUs: number) {}

  /** Opens the socket, reads every link's state (blocking, a few ms), then follows changes from the event loop. */
  static open(options: LinkWatchOptions = {}): LinkWatcher {
    const addon = loadLinkWatchAddon();
    const offsetUs = clockMonotonicOffsetUs(addon);
    let watcher: LinkWatcher | undefined;
    const native = new addon.Watcher((events, dumpDone) => watcher?.applyBatch(events, dumpDone), options);
    watcher = new LinkWatcher(native, offsetUs);
    try {
      const initial = native.dump(DUMP_TIMEOUT_MS);
      watcher.applyBatch(initial.events, initial.dumpDone);
      native.start();
    } catch (err) {
      native.close();
      throw err;
    }
    return watcher;
  }

  /**
   * Calls `listener` with every relevant change of `ifname` from now on (not
   * with the current state: read state() for that). Returns the unsubscribe.
   */
  on(ifname: string, listener: Listener): () => void {
    let set = this.listeners.get(ifname);
    if (!set) this.listeners.set(ifname, (set = new Set()));
    // One entry per subscription, so subscribing the same function twice needs two unsubscribes.
    const entry: Listener = (ev) => listener(ev);
    set.add(entry);
    return () => {
      const current = this.listeners.get(ifname);
      if (!current) return;
      current.delete(entry);
      if (current.size === 0) this.listeners.delete(ifname);
    };
  }

  /** The last known state (a deleted interface's last event is remembered for a while). */
  state(ifname: string): LinkEvent | undefined {
    return this.states.get(ifname);
  }

  /** events: link messages from the kernel (dumps included); overruns: losses healed by a re-dump; malformed: messages skipped. */
  get stats(): { events: number; overruns: number; malformed: number } {
    const s = this.native.stats();
    return { events: s.events, overruns: s.overruns, malformed: s.malformed };
  }

  /** Stops listening and closes the socket; state() still answers. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.close();
    this.listeners.clear();
  }

  private applyBatch(events: readonly NativeLinkEvent[], dumpDone: boolean): void {
    let firstError: unknown;
    const deliver = (ev: LinkEvent): void => {
      const set = this.listeners.get(ev.ifname);
      if (!set) return;
      for (const listener of [...set]) {
        if (this.closed) return;
        try {
          listener(ev);
        } catch (err) {
          // Every listener sees the batch and the state stays whole; the first error is not swallowed.
          firstError ??= err;
        }
      }
    };
    for (const raw of events) {
      if (this.closed) break;
      if (raw.dumpSeq !== 0 && raw.dumpSeq !== this.dumpSeq) {
        // A new dump (a redo of an interrupted one starts from scratch too).
        this.dumpSeq = raw.dumpSeq;
        this.seenDuringDump = new Set();
      }
      this.seenDuringDump?.add(raw.ifindex);
      this.applyOne(raw, deliver);
    }
    if (dumpDone && !this.closed) {
      // A dump after an overrun: links it did not list were deleted while messages were lost.
      const seen = this.seenDuringDump ?? new Set<number>();
      const nowUs = this.toMonotonicUs(loadLinkWatchAddon().monotonicNowUs());
      for (const st of [...this.states.values()]) {
        if (!st.deleted && !seen.has(st.ifindex)) this.update(this.deletedFrom(st, nowUs), deliver);
        if (this.closed) break;
      }
      this.seenDuringDump = undefined;
    }
    if (firstError !== undefined) throw firstError;
  }

  private applyOne(raw: NativeLinkEvent, deliver: (ev: LinkEvent) => void): void {
    const monoUs = this.toMonotonicUs(raw.monoUs);
    if (!raw.deleted) {
      const formerName = this.names.get(raw.ifindex);
      if (formerName !== undefined && formerName !== raw.ifname) {
        // Renamed: the interface is gone under its old name.
        const former = this.states.get(formerName);
        if (former && !former.deleted && former.ifindex === raw.ifindex) this.update(this.deletedFrom(former, monoUs), deliver);
      }
      // The name's former interface (a deletion lost in an overrun) no longer owns its ifindex.
      const formerIndex = this.states.get(raw.ifname)?.ifindex;
      if (formerIndex !== undefined && formerIndex !== raw.ifindex && this.names.get(formerIndex) === raw.ifname) this.names.delete(formerIndex);
      this.names.set(raw.ifindex, raw.ifname);
    }
    this.update(
      {
        ifname: raw.ifname,
        ifindex: raw.ifindex,
        carrier: raw.deleted ? false : raw.carrier,
        up: raw.deleted ? false : raw.up,
        operState: raw.operState,
        deleted: raw.deleted,
        monoUs,
      },
      deliver,
    );
  }

  /** Records `ev` and delivers it when it differs from the last known state in a way a listener cares about. */
  private update(ev: LinkEvent, deliver: (ev: LinkEvent) => void): void {
    const prev = this.states.get(ev.ifname);
    if (
      prev &&
      prev.carrier === ev.carrier &&
      prev.up === ev.up &&
      prev.operState === ev.operState &&
      prev.deleted === ev.deleted &&
      prev.ifindex === ev.ifindex
    ) {
      return;
    }
    Object.freeze(ev);
    if (ev.deleted && this.names.get(ev.ifindex) === ev.ifname) this.names.delete(ev.ifindex);
    this.states.set(ev.ifname, ev);
    this.deletedNames.delete(ev.ifname);
    if (ev.deleted) this.rememberDeleted(ev.ifname);
    deliver(ev);
  }

  private deletedFrom(st: LinkEvent, monoUs: number): LinkEvent {
    return { ifname: st.ifname, ifindex: st.ifindex, carrier: false, up: false, operState: st.operState, deleted: true, monoUs };
  }

  private rememberDeleted(ifname: string): void {
    this.deletedNames.add(ifname);
    for (const oldest of this.deletedNames) {
      if (this.deletedNames.size <= DELETED_REMEMBERED) break;
      this.deletedNames.delete(oldest);
      this.states.delete(oldest);
    }
  }

  private toMonotonicUs(clockMonotonicUs: number): number {
    return clockMonotonicUs - this.offsetUs;
  }
}
