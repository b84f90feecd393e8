/**
 * LinkWatcher (lib/io/link-watch.ts, native/linkwatch.c): carrier changes
 * pushed by the kernel's rtnetlink link events, never polled.
 *
 * In:  real link changes on a veth pair whose peer sits in a namespace of
 *      this test's own (root), and hand-built netlink bytes for the parser.
 * Out: LinkEvents per interface, in kernel order, on the process's one
 *      monotonic clock. Latencies are logged (console.log), never asserted.
 *
 * Every name starts with `lwt` and carries this process's id; afterAll
 * removes all of it, even when a test failed.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { monotonicUs } from '../../lib/clock';
import { LinkEvent, LinkWatchAddonNotBuiltError, LinkWatcher, loadLinkWatchAddon } from '../../lib/io/link-watch';
import { run, runAsync, runQuietly } from '../../lib/lab/exec';

const REPO_ROOT = join(__dirname, '..', '..');
const ADDON = join(REPO_ROOT, 'build', 'Release', 'shadowvm_linkwatch.node');

// The same root check as the other integration tests; these skip instead of failing (CI is root).
const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn(`link-watch.test.ts: not root (uid ${process.getuid?.()}): the veth pair tests are skipped; run jest as root to run them`);
}
const describeAsRoot = isRoot ? describe : describe.skip;

const tag = process.pid.toString(36);
const NS = `lwt-ns-${tag}`;
const HOST = `lwth${tag}`; // stays in this namespace: the one the watcher sees
const PEER = `lwtn${tag}`; // in NS: toggled to make HOST lose and regain carrier
const GONE = `lwtx${tag}`; // a second pair, deleted while a watcher is overrun
const GONE_PEER = `lwty${tag}`;
const RENAMED = `lwtr${tag}`; // GONE's pair again, renamed to RENAMED_TO
const RENAMED_TO = `lwts${tag}`;
const RENAMED_PEER = `lwtz${tag}`;

interface Seen {
  ev: LinkEvent;
  /** monotonicUs() when the listener ran. */
  atUs: number;
}

/** Everything one watcher delivered for one interface, with the time the listener ran. */
class Recorder {
  readonly seen: Seen[] = [];
  readonly stop: () => void;
  constructor(watcher: LinkWatcher, ifname: string) {
    this.stop = watcher.on(ifname, (ev) => this.seen.push({ ev, atUs: monotonicUs() }));
  }

  get events(): LinkEvent[] {
    return this.seen.map((s) => s.ev);
  }

  /** The first event at or after index `from` that satisfies `test`. */
  async next(what: string, test: (ev: LinkEvent) => boolean, from = 0, timeoutMs = 5000): Promise<Seen & { index: number }> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const index = this.seen.findIndex((s, i) => i >= from && test(s.ev));
      if (index >= 0) return { ...this.seen[index], index };
      if (Date.now() > until) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; saw ${JSON.stringify(this.events.slice(from))}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (us: number): string => `${us.toFixed(0)} µs`;

async function waitUntil(what: string, done: () => boolean, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const operstate = (ifname: string): string => readFileSync(`/sys/class/net/${ifname}/operstate`, 'utf8').trim();

// ---------------------------------------------------------------- netlink bytes for the parser

const LE = endianness() === 'LE';
const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const IFLA_IFNAME = 3;
const IFLA_OPERSTATE = 16;
const IFLA_CARRIER = 33;
const IFF_UP = 0x1;
const IFF_RUNNING = 0x40;
const IFF_LOWER_UP = 0x10000;

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(v); else b.writeUInt16BE(v);
  return b;
}
function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0); else b.writeUInt32BE(v >>> 0);
  return b;
}
const pad4 = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);

/** One rtattr; `length` overrides rta_len to build broken ones. */
function attr(type: number, payload: Buffer, length = 4 + payload.length): Buffer {
  return pad4(Buffer.concat([u16(length), u16(type), payload]));
}

interface LinkSpec {
  type?: number;
  ifindex?: number;
  flags?: number;
  name?: Buffer | string | null;
  operstate?: number;
  carrier?: number;
  extra?: Buffer;
  /** Overrides nlmsg_len. */
  length?: number;
  /** Cuts the ifinfomsg to this many bytes. */
  ifinfoBytes?: number;
}

function linkMessage(s: LinkSpec = {}): Buffer {
  const ifinfo = Buffer.concat([Buffer.from([0, 0]), u16(1), u32(s.ifindex ?? 7), u32(s.flags ?? IFF_UP | IFF_RUNNING | IFF_LOWER_UP), u32(0)]);
  const name = s.name === undefined ? 'eth7' : s.name;
  const attrs = [
    name === null ? Buffer.alloc(0) : attr(IFLA_IFNAME, typeof name === 'string' ? Buffer.from(`${name}\0`) : name),
    s.operstate === undefined ? Buffer.alloc(0) : attr(IFLA_OPERSTATE, Buffer.from([s.operstate])),
    s.carrier === undefined ? Buffer.alloc(0) : attr(IFLA_CARRIER, Buffer.from([s.carrier])),
    s.extra ?? Buffer.alloc(0),
  ];
  const body = Buffer.concat([ifinfo.subarray(0, s.ifinfoBytes ?? ifinfo.length), ...attrs]);
  const length = s.length ?? 16 + body.length;
  return pad4(Buffer.concat([u32(length), u16(s.type ?? RTM_NEWLINK), u16(0), u32(0), u32(0), body]));
}

// ---------------------------------------------------------------- any user

describe('link watch, any user', () => {
  test('the addon parses link messages: names, flags, operstate, carrier, deletions, in order', () => {
    const { parseMessages } = loadLinkWatchAddon();
    const bytes = Buffer.concat([
      linkMessage({ ifindex: 7, name: 'eth7', operstate: 6, carrier: 1 }),
      linkMessage({ ifindex: 8, name: 'eth8', flags: IFF_UP, operstate: 3, carrier: 0 }),
      linkMessage({ ifindex: 9, name: 'eth9', flags: IFF_UP | IFF_LOWER_UP }), // no IFLA_CARRIER: IFF_LOWER_UP says
      linkMessage({ type: RTM_DELLINK, ifindex: 7, name: 'eth7', flags: 0, operstate: 2 }),
    ]);
    const { events, malformed } = parseMessages(bytes);
    expect(malformed).toBe(0);
    expect(events.map(({ monoUs: _t, ...rest }) => rest)).toEqual([
      { ifindex: 7, ifname: 'eth7', up: true, lowerUp: true, running: true, operState: 'up', carrier: true, deleted: false, dumpSeq: 0 },
      { ifindex: 8, ifname: 'eth8', up: true, lowerUp: false, running: false, operState: 'lowerlayerdown', carrier: false, deleted: false, dumpSeq: 0 },
      { ifindex: 9, ifname: 'eth9', up: true, lowerUp: true, running: false, operState: 'unknown', carrier: true, deleted: false, dumpSeq: 0 },
      { ifindex: 7, ifname: 'eth7', up: false, lowerUp: false, running: false, operState: 'down', carrier: false, deleted: true, dumpSeq: 0 },
    ]);
  });

  test('short, lying and broken link messages are skipped and counted, never a crash', () => {
    const { parseMessages } = loadLinkWatchAddon();
    const broken: Array<[string, Buffer]> = [
      ['shorter than a header', Buffer.from([1, 2, 3, 4, 5])],
      ['nlmsg_len beyond the datagram', linkMessage({ length: 4096 })],
      ['nlmsg_len shorter than a header', linkMessage({ length: 8 })],
      ['ifinfomsg cut short', linkMessage({ ifinfoBytes: 10, name: null, length: 16 + 10 })],
      ['name without its NUL', linkMessage({ name: Buffer.from('eth7') })],
      ['empty name', linkMessage({ name: '' })],
      ['name of 16 bytes', linkMessage({ name: 'abcdefghijklmnop' })],
      ['no name at all', linkMessage({ name: null })],
      ['ifindex 0', linkMessage({ ifindex: 0 })],
      ['attribute longer than the message', linkMessage({ extra: attr(99, Buffer.alloc(4), 200) })],
      ['attribute length below its header', linkMessage({ extra: attr(99, Buffer.alloc(4), 2) })],
      ['operstate without a byte', linkMessage({ extra: attr(IFLA_OPERSTATE, Buffer.alloc(0)) })],
      ['carrier without a byte', linkMessage({ extra: attr(IFLA_CARRIER, Buffer.alloc(0)) })],
    ];
    for (const [what, bytes] of broken) {
      const r = parseMessages(bytes);
      expect({ what, events: r.events.length, malformed: r.malformed > 0 }).toEqual({ what, events: 0, malformed: true });
    }
    // A good message before garbage is kept; the garbage is counted.
    const r = parseMessages(Buffer.concat([linkMessage(), Buffer.from([9, 9, 9, 9, 9, 9, 9, 9])]));
    expect(r.events.map((e) => e.ifname)).toEqual(['eth7']);
    expect(r.malformed).toBe(1);
  });

  test('random and mutated bytes never crash the parser and never yield a nameless event', () => {
    const { parseMessages } = loadLinkWatchAddon();
    const valid = Buffer.concat([linkMessage({ operstate: 6, carrier: 1 }), linkMessage({ type: RTM_DELLINK, ifindex: 9, name: 'eth9' })]);
    const sane = (bytes: Uint8Array): boolean => {
      const r = parseMessages(bytes);
      return r.malformed >= 0 && r.events.every((e) => e.ifname.length >= 1 && e.ifname.length <= 15 && e.ifindex > 0);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 1024 }), sane), { numRuns: 2000 });
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(valid.length - 1), fc.nat(255)), { maxLength: 8 }), fc.nat(valid.length), (flips, cut) => {
        const bytes = Buffer.from(valid);
        for (const [at, v] of flips) bytes[at] = v;
        return sane(bytes.subarray(0, cut));
      }),
      { numRuns: 2000 },
    );
  });

  test('the initial dump knows every link, loopback included, on the monotonicUs() clock; close() is idempotent', () => {
    const before = monotonicUs();
    const watcher = LinkWatcher.open();
    const after = monotonicUs();
    try {
      const lo = watcher.state('lo');
      expect(lo).toMatchObject({ ifname: 'lo', ifindex: 1, up: true, deleted: false });
      expect(lo!.monoUs).toBeGreaterThanOrEqual(before);
      expect(lo!.monoUs).toBeLessThanOrEqual(after);
      expect(watcher.stats.events).toBeGreaterThan(0);
      expect(watcher.stats.malformed).toBe(0);
      console.log(`link watch: open() with its dump took ${fmt(after - before)}`);
    } finally {
      watcher.close();
      watcher.close();
    }
    expect(watcher.state('lo')).toBeDefined();
  });

  test('a started watcher does not keep the process alive', () => {
    const script = `
      const a = require(${JSON.stringify(ADDON)});
      const w = new a.Watcher(() => {});
      w.dump(5000);
      w.start();
      setTimeout(() => console.log('timer ran'), 20);`;
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
    expect(out.trim()).toBe('timer ran');
  });

  test('a missing addon is reported with what to run', () => {
    expect(existsSync(ADDON)).toBe(true);
    const err = new LinkWatchAddonNotBuiltError([ADDON], new Error('no such file'));
    expect(err.message).toMatch(/link-watch addon \(native\/linkwatch\.c\) is not built.*run `npm rebuild`/);
  });
});

// ---------------------------------------------------------------- root: real links

describeAsRoot('link watch on a veth pair whose peer is in another namespace (root)', () => {
  let watcher: LinkWatcher;
  let batch: ChildProcess | undefined;
  const extraWatchers: LinkWatcher[] = [];

  const peer = (...args: string[]): string[] => ['-n', NS, 'link', 'set', 'dev', PEER, ...args];

  function removeAll(): string[] {
    const failures: string[] = [];
    for (const ifname of [HOST, GONE, RENAMED, RENAMED_TO]) {
      if (runQuietly('ip', ['link', 'show', 'dev', ifname])) runQuietly('ip', ['link', 'del', 'dev', ifname], failures);
    }
    if (run('ip', ['netns', 'list']).split('\n').some((l) => l.split(' ')[0] === NS)) runQuietly('ip', ['netns', 'del', NS], failures);
    return failures;
  }

  async function makePair(host: string, inNs: string): Promise<void> {
    run('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', inNs, 'netns', NS]);
    run('ip', ['link', 'set', 'dev', host, 'up']);
    run('ip', ['-n', NS, 'link', 'set', 'dev', inNs, 'up']);
    // Carrier and operstate settle in the kernel's linkwatch work, just after `up`.
    await waitUntil(`${host} operstate up`, () => operstate(host) === 'up');
  }

  /** A long-lived `ip -batch` in NS: a command costs a pipe write, not a process spawn. */
  function ipBatch(): ChildProcess {
    batch ??= spawn('ip', ['-n', NS, '-force', '-batch', '-'], { stdio: ['pipe', 'ignore', 'inherit'] });
    return batch;
  }

  beforeAll(async () => {
    removeAll();
    run('ip', ['netns', 'add', NS]);
    await makePair(HOST, PEER);
    watcher = LinkWatcher.open();
  });

  afterAll(async () => {
    watcher?.close();
    for (const w of extraWatchers) w.close();
    if (batch && batch.exitCode === null) {
      const exited = new Promise((resolve) => batch!.once('exit', resolve));
      batch.stdin!.end();
      await exited;
    }
    const failures = removeAll();
    expect(failures).toEqual([]);
    expect(existsSync(`/sys/class/net/${HOST}`)).toBe(false);
    expect(run('ip', ['netns', 'list'])).not.toContain(NS);
  });

  test('the initial dump knows the host end, up with carrier', () => {
    expect(watcher.state(HOST)).toMatchObject({ ifname: HOST, up: true, carrier: true, operState: 'up', deleted: false });
    expect(watcher.state(HOST)!.ifindex).toBe(Number(readFileSync(`/sys/class/net/${HOST}/ifindex`, 'utf8')));
  });

  test('the peer going down gives the host end carrier=false; coming back up gives carrier=true', async () => {
    const rec = new Recorder(watcher, HOST);
    try {
      await runAsync('ip', peer('down'));
      const down = await rec.next('carrier=false', (ev) => !ev.carrier);
      expect(down.ev).toMatchObject({ ifname: HOST, carrier: false, up: true, deleted: false });
      expect(down.ev.operState).not.toBe('up');
      expect(watcher.state(HOST)).toEqual(down.ev);

      await runAsync('ip', peer('up'));
      const up = await rec.next('carrier=true', (ev) => ev.carrier, down.index + 1);
      expect(up.ev).toMatchObject({ ifname: HOST, carrier: true, up: true, operState: 'up', deleted: false });
      expect(watcher.state(HOST)).toEqual(up.ev);
      console.log(`link watch: peer down → host operState '${down.ev.operState}'`);
    } finally {
      rec.stop();
    }
  });

  test('an event’s monoUs lies between monotonicUs() before the command and after the event arrives', async () => {
    const rec = new Recorder(watcher, HOST);
    try {
      for (const [cmd, carrier] of [['down', false], ['up', true]] as const) {
        const from = rec.seen.length;
        const before = monotonicUs();
        await runAsync('ip', peer(cmd));
        const seen = await rec.next(`carrier=${carrier}`, (ev) => ev.carrier === carrier, from);
        const after = monotonicUs();
        expect(seen.ev.monoUs).toBeGreaterThan(before);
        expect(seen.ev.monoUs).toBeLessThanOrEqual(seen.atUs);
        expect(seen.atUs).toBeLessThanOrEqual(after);
        console.log(
          `link watch: ${cmd}: spawn of ip → event receipt ${fmt(seen.ev.monoUs - before)}, receipt → listener ${fmt(seen.atUs - seen.ev.monoUs)}`,
        );
      }
    } finally {
      rec.stop();
    }
  });

  test('a 5 ms flap gives a down event, then an up event, in order, with monoUs increasing', async () => {
    const rec = new Recorder(watcher, HOST);
    try {
      await runAsync('sh', ['-c', `ip ${peer('down').join(' ')}; sleep 0.005; ip ${peer('up').join(' ')}`]);
      const up = await rec.next('carrier=true after the flap', (ev) => ev.carrier);
      const events = rec.events.slice(0, up.index + 1);
      expect(up.index).toBeGreaterThan(0);
      expect(events[0]).toMatchObject({ carrier: false, deleted: false });
      expect(events[events.length - 1]).toMatchObject({ carrier: true, operState: 'up' });
      for (let i = 1; i < events.length; i++) expect(events[i].monoUs).toBeGreaterThan(events[i - 1].monoUs);
      console.log(`link watch: 5 ms flap: carrier lost for ${fmt(up.ev.monoUs - events[0].monoUs)} as seen from here`);
    } finally {
      rec.stop();
    }
  });

  test('a back-to-back flap in one ip batch: what the kernel reports arrives in order and ends with carrier', async () => {
    const rec = new Recorder(watcher, HOST);
    try {
      ipBatch().stdin!.write(`link set dev ${PEER} down\nlink set dev ${PEER} up\n`);
      await waitUntil('operstate up again', () => operstate(HOST) === 'up' && watcher.state(HOST)?.carrier === true);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const carriers = rec.events.map((e) => e.carrier);
      // The kernel may fold a flap shorter than its linkwatch work into no change at all.
      expect(carriers.length === 0 || carriers[carriers.length - 1]).toBe(true);
      for (let i = 1; i < rec.events.length; i++) expect(rec.events[i].monoUs).toBeGreaterThan(rec.events[i - 1].monoUs);
      console.log(`link watch: back-to-back flap: carrier sequence seen ${JSON.stringify(carriers)}`);
    } finally {
      rec.stop();
    }
  });

  test('20 down/up toggles arrive in order; latencies are logged', async () => {
    const rec = new Recorder(watcher, HOST);
    const toReceipt: number[] = [];
    const toListener: number[] = [];
    const spawnToReceipt: number[] = [];
    try {
      const ip = ipBatch();
      for (let i = 0; i < 20; i++) {
        for (const [cmd, carrier] of [['down', false], ['up', true]] as const) {
          const from = rec.seen.length;
          const before = monotonicUs();
          ip.stdin!.write(`link set dev ${PEER} ${cmd}\n`);
          const seen = await rec.next(`toggle ${i} carrier=${carrier}`, (ev) => ev.carrier === carrier, from);
          toReceipt.push(seen.ev.monoUs - before);
          toListener.push(seen.atUs - seen.ev.monoUs);
        }
      }
      // For comparison: the same with a fresh `ip` process per change (what a shell script costs).
      for (let i = 0; i < 5; i++) {
        for (const [cmd, carrier] of [['down', false], ['up', true]] as const) {
          const from = rec.seen.length;
          const before = monotonicUs();
          const done = runAsync('ip', peer(cmd));
          const seen = await rec.next(`spawned ${cmd}`, (ev) => ev.carrier === carrier, from);
          await done;
          spawnToReceipt.push(seen.ev.monoUs - before);
        }
      }
      // Every toggle came through, in order (an operState-only change would repeat a carrier value).
      const carriers = rec.events.map((e) => e.carrier).filter((c, i, all) => i === 0 || c !== all[i - 1]);
      expect(carriers).toEqual(Array.from({ length: 50 }, (_, i) => i % 2 === 1));
      for (let i = 1; i < rec.events.length; i++) expect(rec.events[i].monoUs).toBeGreaterThan(rec.events[i - 1].monoUs);
      const line = (name: string, xs: number[]): string => `${name}: median ${fmt(median(xs))}, max ${fmt(Math.max(...xs))} (n=${xs.length})`;
      console.log(
        [
          'link watch latency (down/up of the peer, event on the host end):',
          line('  write to a running ip -batch → receipt in the addon (kernel path + wake-up)', toReceipt),
          line('  receipt in the addon → JS listener', toListener),
          line('  spawn of a fresh ip → receipt', spawnToReceipt),
        ].join('\n'),
      );
    } finally {
      rec.stop();
    }
  });

  test('unsubscribing stops delivery to that listener only', async () => {
    const kept = new Recorder(watcher, HOST);
    const dropped = new Recorder(watcher, HOST);
    try {
      dropped.stop();
      await runAsync('ip', peer('down'));
      await kept.next('carrier=false', (ev) => !ev.carrier);
      await runAsync('ip', peer('up'));
      await kept.next('carrier=true', (ev) => ev.carrier);
      expect(dropped.seen).toEqual([]);
    } finally {
      kept.stop();
    }
  });

  test('an overrun is counted and healed by a re-dump: right final state, and a link deleted meanwhile is reported deleted', async () => {
    await makePair(GONE, GONE_PEER);
    // The smallest buffer the kernel allows: the second message of a burst already overflows it.
    const small = LinkWatcher.open({ receiveBufferBytes: 1 });
    extraWatchers.push(small);
    expect(small.state(GONE)).toMatchObject({ carrier: true, deleted: false });
    const host = new Recorder(small, HOST);
    const gone = new Recorder(small, GONE);
    // execFileSync blocks this event loop: nothing is read while the burst happens.
    const flaps = Array.from({ length: 30 }, () => `ip ${peer('down').join(' ')}; ip ${peer('up').join(' ')}`).join('; ');
    execFileSync('sh', ['-c', `${flaps}; ip link del dev ${GONE}`], { stdio: 'ignore', timeout: 30_000 });
    await waitUntil('an overrun and the deletion', () => small.stats.overruns > 0 && small.state(GONE)?.deleted === true);
    await waitUntil('host end with carrier', () => small.state(HOST)?.carrier === true);
    expect(gone.events[gone.events.length - 1]).toMatchObject({ ifname: GONE, deleted: true, carrier: false, up: false });
    expect(small.state(HOST)).toMatchObject({ carrier: true, up: true, operState: 'up', deleted: false });
    expect(small.stats.malformed).toBe(0);
    // The big-buffered watcher saw the same end without losing anything.
    await waitUntil('the main watcher sees the deletion', () => watcher.state(GONE)?.deleted === true);
    expect(watcher.stats.overruns).toBe(0);
    console.log(`link watch: small buffer: stats ${JSON.stringify(small.stats)}; host-end events delivered after the burst: ${host.seen.length}`);
  });

  test('a renamed interface is deleted under its old name and appears under the new one', async () => {
    await makePair(RENAMED, RENAMED_PEER);
    await waitUntil(`${RENAMED} known`, () => watcher.state(RENAMED)?.carrier === true);
    const ifindex = watcher.state(RENAMED)!.ifindex;
    const oldName = new Recorder(watcher, RENAMED);
    const newName = new Recorder(watcher, RENAMED_TO);
    try {
      await runAsync('sh', ['-c', `ip link set dev ${RENAMED} down && ip link set dev ${RENAMED} name ${RENAMED_TO} && ip link set dev ${RENAMED_TO} up`]);
      await oldName.next('old name deleted', (ev) => ev.deleted);
      await newName.next('new name with carrier', (ev) => ev.carrier && ev.up);
      expect(watcher.state(RENAMED)).toMatchObject({ ifindex, deleted: true, carrier: false });
      expect(watcher.state(RENAMED_TO)).toMatchObject({ ifindex, deleted: false, carrier: true, up: true });
    } finally {
      oldName.stop();
      newName.stop();
    }
  });

  test('close() stops delivery', async () => {
    const closed = LinkWatcher.open();
    extraWatchers.push(closed);
    const silent = new Recorder(closed, HOST);
    const main = new Recorder(watcher, HOST);
    try {
      closed.close();
      await runAsync('ip', peer('down'));
      const down = await main.next('carrier=false on the open watcher', (ev) => !ev.carrier);
      await runAsync('ip', peer('up'));
      await main.next('carrier=true on the open watcher', (ev) => ev.carrier, down.index + 1);
      expect(silent.seen).toEqual([]);
      expect(closed.state(HOST)?.carrier).toBe(true); // the last state it knew
    } finally {
      main.stop();
    }
  });

  test('deleting the veth gives deleted=true for the host end', async () => {
    const rec = new Recorder(watcher, HOST);
    try {
      await runAsync('ip', ['link', 'del', 'dev', HOST]);
      const del = await rec.next('deleted=true', (ev) => ev.deleted);
      expect(del.ev).toMatchObject({ ifname: HOST, deleted: true, carrier: false, up: false });
      expect(watcher.state(HOST)).toEqual(del.ev);
    } finally {
      rec.stop();
    }
  });
});
