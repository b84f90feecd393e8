import { formatBytes, formatDuration, formatFlows, formatStatus } from '../../../lib/control/status-format';
import { sampleSnapshot } from './sample-snapshot';

describe('formatStatus', () => {
  const text = formatStatus(sampleSnapshot());
  const lines = text.split('\n');

  it('starts with the bridge, its state, uptime and agent', () => {
    expect(lines[0]).toBe('bridge lab: CHECKPOINTING, up 1h 02m 03s, sync agent connected (qemu)');
  });

  it('shows one aligned row per port with rx, tx, drops and errors', () => {
    const header = lines.find((l) => l.startsWith('role'))!;
    const uplink = lines.find((l) => l.startsWith('uplink'))!;
    expect(header).toMatch(/rx frames\s+rx bytes\s+tx frames\s+tx bytes\s+rx drops\s+tx errors$/);
    expect(uplink).toMatch(/^uplink\s+veth-up\s+1000\s+1\.4 MiB\s+990\s+1\.3 MiB\s+2\s+0$/);
    expect(uplink.length).toBe(header.length);
  });

  it('shows the receive rings and the kernel memory they hold', () => {
    expect(text).toContain('receive rings (kernel memory, resident): veth-up 527 × 68.0 KiB, tap "p"\\0\nx 4096 × 2.0 KiB + 155 × 64.1 KiB (fanout); 53.0 MiB in all');
  });

  it('shows flows, compared bytes, mismatches, checkpoints by reason and ingress held', () => {
    expect(text).toContain('flows: 12 active, 40 created, 3 evicted');
    expect(text).toContain('compared: 639.0 KiB matched, 634.8 KiB released, 2 mismatches');
    expect(text).toContain('checkpoints: 3 done, 1 failed, 7 coalesced, #5 pending, last took 12.5 ms');
    expect(lines.find((l) => l.trim().startsWith('timeout'))).toMatch(/timeout\s+1$/);
    expect(text).toContain('ingress held 33 frames during checkpoints, 1 dropped');
    expect(text).toMatch(/truncated-ipv4\s+1\s+0\s+2/);
  });

  it('says when there are no ports and no agent', () => {
    const s = { ...sampleSnapshot(), ports: [], agent: { ...sampleSnapshot().agent, connected: false } };
    const t = formatStatus(s);
    expect(t).toContain('ports: none');
    expect(t).toContain('sync agent not connected');
  });
});

describe('formatting helpers', () => {
  it('formats bytes and durations for people', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.0 GiB');
    expect(formatDuration(59.9)).toBe('59s');
    expect(formatDuration(90061)).toBe('1d 1h 01m 01s');
  });

  it('lists flows as a table', () => {
    expect(formatFlows([])).toBe('no flows');
    const t = formatFlows([{ key: 'udp a > b', protocol: 'udp', releasedFrames: 1, releasedBytes: 10, matchedBytes: 10, mismatches: 1, mismatchList: [] }]);
    expect(t.split('\n')[1]).toMatch(/^udp a > b\s+10 B\s+10 B\s+1$/);
  });
});
