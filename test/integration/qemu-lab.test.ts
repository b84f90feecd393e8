/**
 * The QEMU lab: a guest built from Debian packages, booted under the
 * accelerator the probe picks (TCG on hosts whose KVM cannot run it), copied
 * into a second live VM, shadowvm between them. Needs root (taps, a network
 * namespace, AF_PACKET). Uses its own prefix so it can run beside other labs.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogFn } from '../../lib/control/logger';
import { runInAsync } from '../../lib/lab/exec';
import { findLabLeftovers, processRunning, teardownLab } from '../../lib/lab/netns';
import { GUEST_BIG_FILE, buildGuest, guestContent } from '../../lib/lab/qemu/guest';
import { QemuLab, cloneInto, startQemuLab } from '../../lib/lab/qemu/pair';
import { QmpClient } from '../../lib/qemu/qmp';

const PREFIX = 'qt';
const content = guestContent();

describe('QEMU lab', () => {
  let lab: QemuLab | undefined;
  let out: string;
  const problems: string[] = [];
  const log: LogFn = (level, event, fields) => {
    if (level === 'error') problems.push(`${event} ${JSON.stringify(fields)}`);
  };

  beforeAll(async () => {
    if (process.getuid?.() !== 0) {
      throw new Error('the QEMU lab integration tests need root (taps, a network namespace, AF_PACKET, QEMU): run jest as root');
    }
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'svm-qt-'));
    lab = await startQemuLab({ prefix: PREFIX, memMiB: 128, ipv6: true, log });
  }, 300_000);

  afterAll(async () => {
    await lab?.stop();
    teardownLab(PREFIX);
    if (out) fs.rmSync(out, { recursive: true, force: true });
  }, 60_000);

  /** curl in the client namespace, the body into a file; returns the bytes. */
  async function fetchBytes(urlPath: string): Promise<Buffer> {
    const l = lab as QemuLab;
    const file = path.join(out, urlPath.replace(/[^a-z0-9.]/gi, '_'));
    await runInAsync(l.client.netns, 'curl', ['-sS', '--fail', '-m', '60', '-o', file, `http://${l.serviceIpv4}/${urlPath}`], 90_000);
    return fs.readFileSync(file);
  }

  test('the lab is quiet once up: no ARP, RARP or announcements reach the bridge unasked', async () => {
    await new Promise((r) => setTimeout(r, 1000));
    const snap = (lab as QemuLab).bridge.snapshot();
    expect(snap.policyActions).toEqual({});
    expect(snap.mismatches).toBe(0);
  });

  test('the guest image comes from the cache the second time, under the same key', async () => {
    const again = await buildGuest();
    expect(again.built).toBe(false);
    expect(again.key).toBe((lab as QemuLab).guest.key);
  });

  test('says which accelerator runs and why', () => {
    const l = lab as QemuLab;
    expect(['kvm', 'tcg']).toContain(l.accel.accel);
    expect(l.accel.reason.length).toBeGreaterThan(0);
    expect(l.vms.primary.accel).toBe(l.accel.accel);
    expect(l.vms.backup.accel).toBe(l.accel.accel);
  });

  test('serves hello.txt and the 4 MiB file through the bridge, byte-identical', async () => {
    expect((await fetchBytes('hello.txt')).equals(content.get('hello.txt') as Buffer)).toBe(true);
    const big = await fetchBytes(GUEST_BIG_FILE);
    expect(big.length).toBe((content.get(GUEST_BIG_FILE) as Buffer).length);
    expect(big.equals(content.get(GUEST_BIG_FILE) as Buffer)).toBe(true);
  }, 180_000);

  test('answers over IPv6 through the bridge too', async () => {
    const l = lab as QemuLab;
    const body = await runInAsync(l.client.netns, 'curl', ['-sS', '--fail', '-m', '30', `http://[${l.serviceIpv6 as string}]/hello.txt`], 60_000);
    expect(body).toBe((content.get('hello.txt') as Buffer).toString());
  }, 90_000);

  test('the CGI counter counts in guest memory and the session store keeps a value', async () => {
    const first = Number((await fetchBytes('cgi-bin/counter')).toString().trim());
    const second = Number((await fetchBytes('cgi-bin/counter')).toString().trim());
    expect(first).toBeGreaterThan(0);
    expect(second).toBe(first + 1);
    expect((await fetchBytes('cgi-bin/session?colour=teal')).toString()).toBe('colour=teal\n');
    expect((await fetchBytes('cgi-bin/session?colour')).toString()).toBe('colour=teal\n');
  }, 120_000);

  test('an lftp passive-mode download through the bridge is byte-identical', async () => {
    const l = lab as QemuLab;
    const file = path.join(out, 'ftp-blob.bin');
    await runInAsync(l.client.netns, 'lftp', ['-c', [
      'set net:timeout 20', 'set net:max-retries 2', 'set ftp:passive-mode on',
      `open ftp://${l.serviceIpv4}`, `get blob.bin -o ${file}`,
    ].join('; ')], 120_000);
    expect(fs.readFileSync(file).equals(content.get('blob.bin') as Buffer)).toBe(true);
  }, 150_000);

  test('state changed through one VM\'s console makes the next counter answer differ: the bridge sees a mismatch', async () => {
    const l = lab as QemuLab;
    const before = l.bridge.snapshot().mismatches;
    expect(await l.vms.primary.consoleCommand('echo 100 > /var/lib/svm/counter')).toMatchObject({ status: 0 });
    expect((await l.vms.backup.consoleCommand('cat /var/lib/svm/counter')).output).not.toMatch(/^100$/m);
    expect((await fetchBytes('cgi-bin/counter')).toString()).toBe('101\n');
    expect(l.bridge.snapshot().mismatches).toBeGreaterThan(before);
  }, 60_000);

  test('both VMs run and the bridge has frames from both replicas', async () => {
    const l = lab as QemuLab;
    for (const vm of [l.vms.primary, l.vms.backup]) {
      expect(vm.running).toBe(true);
      expect(await vm.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
    }
    const snap = l.bridge.snapshot();
    const port = (role: string) => snap.ports.find((p) => p.role === role);
    expect(port('primary')?.rxFrames).toBeGreaterThan(0);
    expect(port('backup')?.rxFrames).toBeGreaterThan(0);
    expect(snap.replicas.map((r) => r.port).sort()).toEqual([l.taps.backup, l.taps.primary].sort());
    expect(snap.state).toBe('COMPARING');
    // A slow TCG primary is not a dead one.
    expect(snap.failover.count).toBe(0);
    expect(problems).toEqual([]);
  });

  test('an agent in another process finds both VMs in lab.json and gets its own QMP connection to each', async () => {
    const l = lab as QemuLab;
    const described = JSON.parse(fs.readFileSync(l.descriptionFile, 'utf8'));
    expect(described.vms.primary.tap).toBe(l.taps.primary);
    expect(described.vmTemplate.memMiB).toBe(128);
    for (const role of ['primary', 'backup']) {
      const qmp = await QmpClient.connect(described.vms[role].agentQmpSocket, { timeoutMs: 5000 });
      try {
        expect(await qmp.execute('query-status')).toMatchObject({ running: true });
      } finally {
        qmp.close();
      }
    }
  }, 30_000);

  test('the second VM was made by copying the first: bytes moved and a measured pause', () => {
    const l = lab as QemuLab;
    expect(l.clone.bytes).toBeGreaterThan(1 << 20);
    expect(l.clone.ms).toBeGreaterThan(0);
    expect(l.clone.pages + l.clone.zeroPages).toBeGreaterThan(0);
  });

  test('cloneInto copies the running first VM into a fresh standby on a fresh tap; both run and the first still serves', async () => {
    const l = lab as QemuLab;
    const before = Number((await fetchBytes('cgi-bin/counter')).toString().trim());
    const standby = await l.launchVm();
    expect(standby.tap).toBe(`${PREFIX}s1`);
    const report = await cloneInto(l.vms.primary, standby);
    expect(report.bytes).toBeGreaterThan(1 << 20);
    expect(await standby.qmp.execute('query-status')).toMatchObject({ status: 'running' });
    expect(await l.vms.primary.qmp.execute('query-status')).toMatchObject({ status: 'running' });
    expect(Number((await fetchBytes('cgi-bin/counter')).toString().trim())).toBe(before + 1);
    // A standby nobody stops is the lab's to remove (next test).
  }, 120_000);

  test('teardown leaves no QEMU process, tap, namespace or run directory', async () => {
    const l = lab as QemuLab;
    const pids = findLabLeftovers(PREFIX).processes;
    expect(pids.length).toBe(3);
    await l.stop();
    expect(pids.filter(processRunning)).toEqual([]);
    expect(findLabLeftovers(PREFIX)).toEqual({ namespaces: [], links: [], processes: [], runDirExists: false });
  }, 60_000);

  test('teardownLab(prefix), with no handle to it, finds and kills a QEMU of the lab by its run directory', async () => {
    const l = lab as QemuLab;
    fs.mkdirSync(l.runDir, { recursive: true });
    const orphan = spawn('qemu-system-x86_64', [
      '-nodefaults', '-display', 'none', '-machine', 'none', '-S', '-pidfile', path.join(l.runDir, 'orphan.pid'),
    ], { detached: true, stdio: 'ignore' });
    orphan.unref();
    const until = Date.now() + 10_000;
    while (!findLabLeftovers(PREFIX).processes.includes(orphan.pid as number) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(findLabLeftovers(PREFIX).processes).toContain(orphan.pid);
    const report = teardownLab(PREFIX);
    expect(report.failures).toEqual([]);
    expect(processRunning(orphan.pid as number)).toBe(false);
    expect(findLabLeftovers(PREFIX)).toEqual({ namespaces: [], links: [], processes: [], runDirExists: false });
  }, 30_000);
});
