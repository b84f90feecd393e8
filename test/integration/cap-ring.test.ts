/**
 * The `cap` back-end's ring on real veths (root, ethtool): libpcap makes its
 * slots 64 KiB while segmentation or receive offloads are on, and the bridge
 * says so at start (`cap-ring-small`, with the ethtool line that fixes it).
 * lab-bench's cap mode lost backup frames to that ring: 8 to 20 `timeout`
 * checkpoints a run.
 */
import type { LogLevel } from '../../lib/control/logger';
import { capRingOffloads, openPorts } from '../../lib/cli/ports';
import { run, runQuietly } from '../../lib/lab/exec';

const tag = `svmc${process.pid.toString(36)}`;
const ON = { a: `${tag}a`, b: `${tag}b` };
const OFF = { a: `${tag}c`, b: `${tag}d` };

function makePair(a: string, b: string): void {
  run('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
  for (const ifname of [a, b]) run('ip', ['link', 'set', 'dev', ifname, 'up']);
}

beforeAll(() => {
  makePair(ON.a, ON.b);
  makePair(OFF.a, OFF.b);
  run('ethtool', ['-K', ON.a, 'tso', 'on', 'gso', 'on']);
  run('ethtool', ['-K', OFF.a, 'tso', 'off', 'gso', 'off', 'gro', 'off']);
});

afterAll(() => {
  for (const p of [ON, OFF]) if (runQuietly('ip', ['link', 'show', 'dev', p.a])) runQuietly('ip', ['link', 'del', 'dev', p.a]);
});

describe('the cap back-end\'s ring and the offloads', () => {
  it('reads which offloads are on', () => {
    expect(capRingOffloads(ON.a)).toEqual(expect.arrayContaining(['tcp-segmentation-offload', 'generic-segmentation-offload']));
    expect(capRingOffloads(OFF.a)).toEqual([]);
    expect(capRingOffloads(`${tag}none`)).toBeNull();
  });

  it('warns at start for each port whose offloads make the ring small, with the fix', async () => {
    const logged: { level: LogLevel; event: string; fields?: Record<string, unknown> }[] = [];
    const ports = openPorts('cap', { uplink: ON.a, primary: OFF.a, backup: ON.b }, { log: (level, event, fields) => logged.push({ level, event, fields }) });
    try {
      const warned = logged.filter((l) => l.event === 'cap-ring-small');
      expect(warned.map((l) => l.fields?.port)).toEqual([ON.a, ON.b].filter((p) => (capRingOffloads(p) ?? []).length > 0));
      expect(warned[0]).toMatchObject({ level: 'warn', fields: { port: ON.a, fix: expect.stringMatching(new RegExp(`^ethtool -K ${ON.a} .*tso off.*gso off`)) } });
    } finally {
      await Promise.all([ports.uplink.close(), ports.primary.close(), ports.backup.close()]);
    }
  });

  it('says nothing for AF_PACKET ports (their slots are the bridge\'s own choice)', async () => {
    const logged: string[] = [];
    const ports = openPorts('afpacket', { uplink: ON.a, primary: OFF.a, backup: ON.b }, { vnetHdr: false, log: (_l, event) => logged.push(event) });
    await Promise.all([ports.uplink.close(), ports.primary.close(), ports.backup.close()]);
    expect(logged).toEqual([]);
  });
});
