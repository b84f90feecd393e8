/**
 * `shadowvm run` as an administrator starts it (root): on real interfaces,
 * with its sockets; and how it refuses bad input with one line and leaves
 * nothing half set up.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { get } from 'node:http';
import { queryControlSocket } from '../../lib/control/control-socket';
import { AfPacketPort } from '../../lib/io/afpacket-port';
import { readThreads, requireBuiltCli, requireRoot, runShadowvm, SCHED_RR, SHADOWVM_BIN, spawnShadowvm, ThreadInfo, watchChild } from '../support/lab-helpers';
import { arpFrame } from '../support/frames';

jest.setTimeout(60_000);

const tag = `r${process.pid % 10000}`;
const ifs = { uplink: `svm${tag}u`, primary: `svm${tag}p`, backup: `svm${tag}b` };
const peers = Object.values(ifs).map((i) => `${i}x`);

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'ignore' });
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

async function waitForThread(pid: number, name: string): Promise<ThreadInfo[]> {
  for (let i = 0; i < 100; i++) {
    const threads = readThreads(pid);
    if (threads.some((t) => t.name === name)) return threads;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no thread ${name} in ${pid}: ${readThreads(pid).map((t) => t.name).join(', ')}`);
}

/** One broadcast ARP request sent on `ifname` (the peer of a bridge port), from this process. */
async function sendBroadcast(ifname: string): Promise<void> {
  const port = new AfPacketPort(ifname, { sendThread: false });
  try {
    port.send(arpFrame());
    port.flush();
  } finally {
    await port.close();
  }
}

describe('shadowvm run (root, on veth pairs)', () => {
  let dir: string;
  beforeAll(() => {
    requireRoot('run-cli.test.ts');
    requireBuiltCli();
    dir = mkdtempSync(join(tmpdir(), 'svm-run-'));
    Object.values(ifs).forEach((name, i) => {
      ip('link', 'add', name, 'type', 'veth', 'peer', 'name', peers[i]);
      ip('link', 'set', name, 'up');
      ip('link', 'set', peers[i], 'up');
    });
  });
  afterAll(() => {
    for (const name of Object.values(ifs)) {
      try { ip('link', 'del', name); } catch { /* already gone */ }
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const base = () => ['run', '--name', tag, '--uplink', ifs.uplink, '--primary', ifs.primary, '--backup', ifs.backup,
    '--agent', join(dir, 'agent.sock'), '--control', join(dir, 'control.sock')];

  it('runs, answers status on its control socket and metrics on loopback, refuses a second bridge on the same sockets, and stops cleanly', async () => {
    const bridge = spawnShadowvm([...base(), '--metrics', '127.0.0.1:0']);
    try {
      await bridge.waitFor(/"event":"started"/, 15_000);
      const status = await runShadowvm(['status', '--control', join(dir, 'control.sock'), '--json']);
      expect(status.code).toBe(0);
      const snap = JSON.parse(status.output);
      expect(snap.state).toBe('DEGRADED'); // no agent yet: the primary's output flows unchecked, and it says so
      expect(snap.ports.map((p: { name: string }) => p.name)).toEqual([ifs.uplink, ifs.primary, ifs.backup]);
      expect(bridge.output()).toContain('"event":"degraded"');

      const second = await runShadowvm(base());
      expect(second.code).toBe(2);
      const lines = second.output.trim().split('\n').filter((l) => l.startsWith('shadowvm:'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/in use/);
      expect(existsSync(join(dir, 'control.sock'))).toBe(true); // the first bridge's socket survived
    } finally {
      bridge.child.kill('SIGTERM');
    }
    expect(await bridge.exited).toBe(0);
    expect(existsSync(join(dir, 'control.sock'))).toBe(false);
    expect(existsSync(join(dir, 'agent.sock'))).toBe(false);
  });

  it('moves frames on a thread of its own: 400 status requests cost it far fewer snapshots; --no-data-plane-thread keeps one thread', async () => {
    const path = join(dir, 'control.sock');
    const bridge = spawnShadowvm(base());
    try {
      await bridge.waitFor(/"event":"data-plane-thread"/, 15_000);
      for (let round = 0; round < 20; round++) {
        const replies = await Promise.all(Array.from({ length: 20 }, () => queryControlSocket(path, { cmd: 'status' }, 10_000)));
        expect(replies.every((r) => r.ok)).toBe(true);
      }
      const last = await queryControlSocket(path, { cmd: 'status' });
      if (!last.ok) throw new Error(last.error);
      const c = last.status.components.data_plane_thread;
      expect(c.snapshots_taken + c.snapshots_shared).toBeGreaterThanOrEqual(401);
      expect(c.snapshots_taken).toBeLessThan(200); // coalesced: one in flight, reused for 20 ms
      expect(c.call_errors).toBe(0);
      expect(last.status.components.control_socket).toBeDefined();
      // With virtio-net headers (the default) there is no send thread, so no gate of inline sends.
      expect(last.status.inlineSends).toBeUndefined();
      // Each port is read through two rings (split rings, the default with virtio-net headers): 4,096 slots of 2 KiB, and 128 big enough for a 64 KiB GSO super-frame.
      for (const p of last.status.ports) {
        expect(p.ring).toMatchObject({ frames: 4096, frameSize: 2048 });
        expect(p.ring!.large!.frames).toBeGreaterThanOrEqual(128);
        expect(p.ring!.large!.frameSize).toBeGreaterThan(64 << 10);
        expect(p.ring!.bytes).toBeLessThan(20 << 20); // one ring of 512 super-frame slots: 34 MiB
        // On Linux 6.2+ the two rings' sockets share a fanout group (each frame offered to one of them).
        const [major, minor] = release().split('.').map(Number);
        expect(p.ring!.large!.fanout).toBe(major > 6 || (major === 6 && minor >= 2));
      }
    } finally {
      bridge.child.kill('SIGTERM');
    }
    expect(await bridge.exited).toBe(0);

    const single = spawnShadowvm([...base(), '--no-data-plane-thread', '--no-vnet-hdr', '--ring-frames', '128']);
    try {
      await single.waitFor(/"event":"started"/, 15_000);
      const r = await queryControlSocket(path, { cmd: 'status' });
      expect(r.ok && r.status.components.data_plane_thread).toBeUndefined();
      // Without them, the send thread is on and run's rate gate of inline sends reaches the bridge (idle: open).
      expect(r.ok && r.status.inlineSends).toEqual({ on: true, switches: 0, maxFps: 2000 });
      // --ring-frames sizes every port's ring (MTU slots without virtio-net headers).
      for (const p of r.ok ? r.status.ports : []) {
        expect(p.ring?.frames).toBeGreaterThanOrEqual(128);
        expect(p.ring!.frames).toBeLessThan(192); // rounded up to whole blocks
        expect(p.ring!.frameSize).toBeLessThanOrEqual(4096);
      }
      expect(r.ok && r.status.ports).toHaveLength(3);
      const text = await runShadowvm(['status', '--control', path]);
      expect(text.output).toMatch(/receive rings \(kernel memory, resident\): .* 128 × /);
      expect(single.output()).not.toContain('"event":"data-plane-thread"');
    } finally {
      single.child.kill('SIGTERM');
    }
    expect(await single.exited).toBe(0);
  });

  it('--no-split-rings reads each port through one ring of 512 super-frame slots; with split rings --ring-frames sizes the small ring, --large-ring-frames the large one', async () => {
    const path = join(dir, 'control.sock');
    const bridge = spawnShadowvm([...base(), '--no-split-rings']);
    try {
      await bridge.waitFor(/"event":"data-plane-thread"/, 15_000);
      const r = await queryControlSocket(path, { cmd: 'status' });
      if (!r.ok) throw new Error(r.error);
      expect(r.status.ports).toHaveLength(3);
      for (const p of r.status.ports) {
        // 512 slots (rounded up to whole kernel blocks), each big enough for a 64 KiB GSO super-frame.
        expect(p.ring?.frames).toBeGreaterThanOrEqual(512);
        expect(p.ring!.frames).toBeLessThan(600);
        expect(p.ring!.frameSize).toBeGreaterThan(64 << 10);
        expect(p.ring!.large).toBeUndefined();
        expect(p.ring!.bytes).toBeGreaterThanOrEqual(512 * p.ring!.frameSize);
      }
    } finally {
      bridge.child.kill('SIGTERM');
    }
    expect(await bridge.exited).toBe(0);

    const sized = spawnShadowvm([...base(), '--ring-frames', '1024', '--large-ring-frames', '32']);
    try {
      await sized.waitFor(/"event":"data-plane-thread"/, 15_000);
      const r = await queryControlSocket(path, { cmd: 'status' });
      if (!r.ok) throw new Error(r.error);
      for (const p of r.status.ports) {
        expect(p.ring).toMatchObject({ frames: 1024, frameSize: 2048 });
        // 32 slots, rounded up to whole kernel blocks (128 become 155).
        expect(p.ring!.large!.frames).toBeGreaterThanOrEqual(32);
        expect(p.ring!.large!.frames).toBeLessThan(100);
      }
      const text = await runShadowvm(['status', '--control', path]);
      expect(text.output).toMatch(/receive rings \(kernel memory, resident\): \S+ 1024 × 2\.0 KiB \+ \d+ × 64\.\d KiB/);
    } finally {
      sized.child.kill('SIGTERM');
    }
    expect(await sized.exited).toBe(0);

    // --no-split-rings-fanout: two rings, but their sockets in no fanout group (what kernels before 6.2 get).
    const unshared = spawnShadowvm([...base(), '--no-split-rings-fanout']);
    try {
      await unshared.waitFor(/"event":"data-plane-thread"/, 15_000);
      const r = await queryControlSocket(path, { cmd: 'status' });
      if (!r.ok) throw new Error(r.error);
      for (const p of r.status.ports) expect(p.ring!.large).toMatchObject({ fanout: false });
      const text = await runShadowvm(['status', '--control', path]);
      expect(text.output).not.toContain('(fanout)');
    } finally {
      unshared.child.kill('SIGTERM');
    }
    expect(await unshared.exited).toBe(0);
  });

  it('--realtime: the data-plane thread and its send thread run SCHED_RR, the main thread stays normal; status and metrics say so; off leaves every thread normal', async () => {
    const metricsPort = 20000 + (process.pid % 1000);
    const bridge = spawnShadowvm([...base(), '--send-thread', 'on', '--realtime-priority', '7', '--metrics', `127.0.0.1:${metricsPort}`]);
    try {
      await bridge.waitFor(/"event":"started"/, 15_000);
      const pid = bridge.child.pid!;
      // The send thread starts with the first frame the bridge sends: a broadcast in on the uplink goes to both VMs.
      await sendBroadcast(peers[0]);
      const threads = await waitForThread(pid, 'svm-send');
      const byName = (n: string) => threads.filter((t) => t.name === n);
      expect(byName('svm-dataplane')).toEqual([expect.objectContaining({ policy: SCHED_RR, rtPriority: 7 })]);
      expect(byName('svm-send')).toEqual([expect.objectContaining({ policy: SCHED_RR, rtPriority: 7 })]);
      // Node's platform threads (V8's helpers: the data plane's collections wait for their work) run one step below.
      const json = await queryControlSocket(join(dir, 'control.sock'), { cmd: 'status' });
      const helpers = (json.ok ? json.status.dataPlane?.helpers : undefined)!;
      expect(helpers.priority).toBe(6);
      // --send-thread on: run's rate gate of inline sends reaches the data-plane thread's bridge.
      expect(json.ok && json.status.inlineSends).toMatchObject({ maxFps: 2000 });
      expect(helpers.tids.length).toBeGreaterThanOrEqual(4);
      expect(threads.filter((t) => helpers.tids.includes(t.tid))).toEqual(helpers.tids.map((tid) => expect.objectContaining({ tid, policy: SCHED_RR, rtPriority: 6 })));
      // Everything else, the main thread (control socket, metrics, signals) first, keeps the normal policy.
      const others = threads.filter((t) => t.name !== 'svm-dataplane' && t.name !== 'svm-send' && !helpers.tids.includes(t.tid));
      expect(others.find((t) => t.tid === pid)).toEqual(expect.objectContaining({ policy: 0, rtPriority: 0 }));
      expect(helpers.tids).not.toContain(pid);
      expect(others.every((t) => t.policy === 0)).toBe(true);

      const status = await runShadowvm(['status', '--control', join(dir, 'control.sock')]);
      expect(status.output).toContain(`data plane: thread svm-dataplane (tid ${byName('svm-dataplane')[0].tid}), realtime (SCHED_RR 7); ${helpers.tids.length} platform thread(s) SCHED_RR 6`);
      const metrics = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`);
      expect(metrics.body).toMatch(/^shadowvm_data_plane_realtime_priority 7$/m);
    } finally {
      bridge.child.kill('SIGTERM');
    }
    expect(await bridge.exited).toBe(0);

    const off = spawnShadowvm([...base(), '--send-thread', 'on', '--realtime', 'off']);
    try {
      await off.waitFor(/"event":"started"/, 15_000);
      await sendBroadcast(peers[0]);
      const threads = await waitForThread(off.child.pid!, 'svm-send');
      expect(threads.filter((t) => t.name === 'svm-dataplane')).toHaveLength(1);
      expect(threads.every((t) => t.policy === 0)).toBe(true);
      const status = await runShadowvm(['status', '--control', join(dir, 'control.sock')]);
      expect(status.output).toMatch(/data plane: thread svm-dataplane \(tid \d+\), normal policy\n/);
    } finally {
      off.child.kill('SIGTERM');
    }
    expect(await off.exited).toBe(0);
  });

  it('--realtime when the kernel refuses it (root without CAP_SYS_NICE): on exits 2 with one line saying why; auto runs at the normal policy and warns', async () => {
    const noNice = ['setpriv', '--bounding-set', '-sys_nice', '--inh-caps', '-sys_nice', process.execPath, SHADOWVM_BIN];
    const on = watchChild(spawn(noNice[0], [...noNice.slice(1), ...base(), '--realtime', 'on'], { stdio: ['ignore', 'pipe', 'pipe'] }), 'run --realtime on');
    expect(await on.exited).toBe(2);
    const lines = on.output().trim().split('\n').filter((l) => l.startsWith('shadowvm:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/--realtime on: the kernel refused SCHED_RR priority 10 for the data-plane thread \(EPERM: it needs root or CAP_SYS_NICE/);
    expect(existsSync(join(dir, 'control.sock'))).toBe(false);

    const auto = watchChild(spawn(noNice[0], [...noNice.slice(1), ...base()], { stdio: ['ignore', 'pipe', 'pipe'] }), 'run --realtime auto');
    try {
      await auto.waitFor(/"event":"started"/, 15_000);
      expect(auto.output()).toMatch(/"event":"realtime-unavailable".*EPERM/);
      const threads = readThreads(auto.child.pid!);
      expect(threads.filter((t) => t.name === 'svm-dataplane')).toHaveLength(1);
      expect(threads.every((t) => t.policy === 0)).toBe(true);
      const status = await runShadowvm(['status', '--control', join(dir, 'control.sock')]);
      expect(status.output).toMatch(/data plane: thread svm-dataplane \(tid \d+\), normal policy \(realtime refused: the kernel refused SCHED_RR priority 10 .*EPERM/);
    } finally {
      auto.child.kill('SIGTERM');
    }
    expect(await auto.exited).toBe(0);
  });

  it('--realtime on without the data-plane thread, a priority out of 1-99, or --workers out of 1-64 or without its needs, is refused with one line', async () => {
    for (const [extra, pattern] of [
      [['--realtime', 'on', '--no-data-plane-thread'], /--realtime on needs the data-plane thread/],
      [['--realtime-priority', '0'], /--realtime-priority must be a whole number from 1 to 99, got 0/],
      [['--realtime-priority', '100'], /--realtime-priority must be a whole number from 1 to 99, got 100/],
      [['--workers', '0'], /--workers must be a whole number from 1 to 64, got 0/],
      [['--large-ring-frames', '4'], /--large-ring-frames must be 0 \(automatic\) or a whole number from 8 to 4096, got 4/],
      [['--workers', '65'], /--workers must be a whole number from 1 to 64, got 65/],
      [['--workers', '2', '--no-data-plane-thread'], /--workers above 1 needs the data-plane thread/],
      [['--workers', '2', '--io', 'cap'], /--workers above 1 needs --io afpacket/],
    ] as [string[], RegExp][]) {
      const r = await runShadowvm([...base(), ...extra]);
      expect(r.code).toBe(2);
      const lines = r.output.trim().split('\n').filter((l) => l.startsWith('shadowvm:'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(pattern);
    }
  });

  it('serves Prometheus text at /metrics', async () => {
    const port = 19000 + (process.pid % 1000);
    const bridge = spawnShadowvm([...base(), '--metrics', `127.0.0.1:${port}`]);
    try {
      await bridge.waitFor(/"event":"started"/, 15_000);
      const res = await httpGet(`http://127.0.0.1:${port}/metrics`);
      expect(res.status).toBe(200);
      expect(res.body).toMatch(/^# TYPE shadowvm_\w+ (counter|gauge)$/m);
      expect(res.body).toMatch(/^shadowvm_replication_state\{state="DEGRADED"\} 1$/m);
    } finally {
      bridge.child.kill('SIGTERM');
      await bridge.exited;
    }
  });

  it.each([
    ['an unknown interface', ['--uplink', 'nosuchif0'], /nosuchif0/],
    ['a bad --metrics', ['--metrics', 'localhost'], /--metrics wants HOST:PORT/],
    ['a remote --metrics address', ['--metrics', '10.1.2.3:9464'], /not a loopback address/],
    ['a bad --name', ['--name', 'a/b'], /--name/],
    ['a bad --heap-growing-percent', ['--heap-growing-percent', '-5'], /--heap-growing-percent must be a whole number from 0 to 1000/],
    ['a bad --send-inline-frames', ['--send-inline-frames', '-1'], /--send-inline-frames must be a whole number from 0 to 1024/],
    ['a bad --send-inline-max-fps', ['--send-inline-max-fps', '1.5'], /--send-inline-max-fps must be a whole number from 0 to 10000000/],
    ['a bad --ring-frames', ['--ring-frames', '10'], /--ring-frames must be 0 \(automatic\) or a whole number from 64 to 1048576/],
    ['a bad --optimize-after-kib', ['--optimize-after-kib', '2048'], /--optimize-after-kib must be a whole number from 0 to 1024/],
    ['a bad --initial-old-space-mib', ['--initial-old-space-mib', '1.5'], /--initial-old-space-mib must be a whole number from 0 to 4096/],
  ])('exits 2 with one line for %s and leaves no socket behind', async (_what, extra, message) => {
    const args = [...base()];
    for (let i = 0; i < extra.length; i += 2) {
      const at = args.indexOf(extra[i]);
      if (at >= 0) args[at + 1] = extra[i + 1];
      else args.push(extra[i], extra[i + 1]);
    }
    const r = await runShadowvm(args);
    expect(r.code).toBe(2);
    const lines = r.output.trim().split('\n').filter((l) => l.startsWith('shadowvm:'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
    expect(existsSync(join(dir, 'control.sock'))).toBe(false);
    expect(existsSync(join(dir, 'agent.sock'))).toBe(false);
  });

  it('exits 2 with one line for an invalid config file', async () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"maxUnmatchedAgeMs": -1}');
    const r = await runShadowvm([...base(), '--config', bad]);
    expect(r.code).toBe(2);
    expect(r.output).toMatch(/^shadowvm: .*bad\.json: invalid setting maxUnmatchedAgeMs: must be a number > 0, got -1$/m);
    writeFileSync(bad, '{"policy": {"arp": "drop", "lldp": "drop"}}');
    const unknown = await runShadowvm([...base(), '--config', bad]);
    expect(unknown.code).toBe(2);
    expect(unknown.output).toMatch(/^shadowvm: .*bad\.json: invalid setting policy\.lldp: unknown key; allowed keys in policy: arp, otherEtherTypes, /m);
    writeFileSync(bad, 'not json');
    const r2 = await runShadowvm([...base(), '--config', bad]);
    expect(r2.code).toBe(2);
    expect(r2.output).toMatch(/^shadowvm: config file .* is not valid/m);
  });

  it('takes its interfaces and metrics address from the config file, as shadowvm@.service runs it', async () => {
    const cfg = join(dir, 'ports.json');
    const port = 20000 + (process.pid % 1000);
    writeFileSync(cfg, JSON.stringify({ ports: { uplink: ifs.uplink, primary: ifs.primary, backup: ifs.backup }, metrics: `127.0.0.1:${port}` }));
    const bridge = spawnShadowvm(['run', '--name', tag, '--config', cfg, '--agent', join(dir, 'agent.sock'), '--control', join(dir, 'control.sock')]);
    try {
      await bridge.waitFor(/"event":"started"/, 15_000);
      const status = await runShadowvm(['status', '--control', join(dir, 'control.sock'), '--json']);
      expect(JSON.parse(status.output).ports.map((p: { name: string }) => p.name)).toEqual([ifs.uplink, ifs.primary, ifs.backup]);
      expect((await httpGet(`http://127.0.0.1:${port}/metrics`)).status).toBe(200);
    } finally {
      bridge.child.kill('SIGTERM');
    }
    expect(await bridge.exited).toBe(0);
    writeFileSync(cfg, JSON.stringify({ ports: { uplink: ifs.uplink } }));
    const r = await runShadowvm(['run', '--name', tag, '--config', cfg]);
    expect(r.code).toBe(2);
    expect(r.output).toMatch(/^shadowvm: name the primary, backup interfaces: --primary, --backup, or "ports": \{"primary": IF, "backup": IF\} in --config$/m);
  });
});
