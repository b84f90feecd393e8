/**
 * The `cap` back-end's ring on real veths (root, ethtool): libpcap makes its
 * slots 64 KiB while segmentation or receive offloads are on, and the bridge
 * says so at start (`cap-ring-small`, with the ethtool line that fixes it).
 * lab-bench's cap mode lost backup frames to that ring: 8 to 20 `timeout`
 * checkpoints a run. No cap handle is opened here: cap 0.2.1 crashes the
 * process when V8 collects a closed handle, and jest drops each test file's
 * modules (and the handles lib/io/cap-port.ts keeps from collection) after it.
 */
import { capRingOffloads, capRingWarning } from '../../lib/cli/ports';
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

  it('warns for a port whose offloads make the ring small, with the ethtool line that fixes it', () => {
    expect(capRingWarning(ON.a)).toMatchObject({
      port: ON.a,
      offloadsOn: expect.arrayContaining(['tcp-segmentation-offload', 'generic-segmentation-offload']),
      fix: expect.stringMatching(new RegExp(`^ethtool -K ${ON.a} .*tso off.*gso off`)),
    });
    // The fix works: after it, nothing to say.
    run('ethtool', ['-K', ON.a, ...capRingWarning(ON.a)!.fix!.toString().split(' (')[0].split(' ').slice(3)]);
    expect(capRingWarning(ON.a)).toBeNull();
  });

  it('says nothing for a port with them off, or one it cannot read', () => {
    expect(capRingWarning(OFF.a)).toBeNull();
    expect(capRingWarning(`${tag}none`)).toBeNull();
  });
});
