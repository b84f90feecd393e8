/**
 * The rate gate of inline sends (BridgeOptions.inlineSendsMaxFps, run's
 * --send-inline-max-fps): at each tick the bridge allows its ports to send a
 * small flush on the data plane only while it took in few frames a second;
 * under load every send goes through the send thread. In-memory ports that
 * record what they were told; the native side of setInlineSends is in
 * test/integration/afpacket-port.test.ts.
 */
import { Bridge, INLINE_QUIET_TICKS, TICK_MS } from '../../lib/bridge';
import { MemoryPort } from '../../lib/io/memory';
import { makePipelineConfig } from '../../lib/pipeline';
import { udpFrame } from '../support/frames';
import { waitFor } from './agents/socket-helpers';
import { renderMetrics } from '../../lib/control/metrics';
import { formatStatus } from '../../lib/control/status-format';

class GatedPort extends MemoryPort {
  readonly told: boolean[] = [];
  setInlineSends(on: boolean): void {
    this.told.push(on);
  }
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function rig(inlineSendsMaxFps?: number) {
  const uplink = new GatedPort('up0'), primary = new GatedPort('p0'), backup = new GatedPort('b0');
  const bridge = new Bridge({ uplink, primary, backup }, {
    name: 'gate',
    config: makePipelineConfig({}),
    ...(inlineSendsMaxFps !== undefined ? { inlineSendsMaxFps } : {}),
  });
  await bridge.start();
  return { bridge, ports: [uplink, primary, backup] };
}

const gateOf = (bridge: Bridge) => bridge.snapshot().inlineSends;

/** `n` client datagrams from distinct source ports at once: one burst. */
const burst = (n: number, firstPort: number, payload: string) => Array.from({ length: n }, (_, i) => udpFrame({ from: 'client', sport: firstPort + i, payload }));

describe('the rate gate of inline sends', () => {
  it('allows them while traffic is light, stops them on a burst, and allows them again once it is over', async () => {
    const { bridge, ports } = await rig(1000);
    const [uplink] = ports;
    try {
      // The first tick tells every port the gate's state (idle: on).
      await waitFor('first tick', () => ports.every((p) => p.told.length >= 1), 2000);
      expect(ports.map((p) => p.told)).toEqual([[true], [true], [true]]);
      expect(gateOf(bridge)).toEqual({ on: true, switches: 0, maxFps: 1000 });

      // 200 frames at once: at least 200 frames over the tick's 10 ms (20,000 a second; over 1,000
      // however late the tick runs, up to 200 ms).
      uplink.inject(burst(200, 40000, 'q'));
      await waitFor('gate off', () => ports.every((p) => p.told.includes(false)), 2000);
      expect(ports.map((p) => p.told)).toEqual([[true, false], [true, false], [true, false]]);

      // Quiet again: allowed after INLINE_QUIET_TICKS quiet ticks (not at the first); nothing is told while the state holds.
      const offAt = Date.now();
      await waitFor('gate on again', () => ports.every((p) => p.told.length >= 3), 2000);
      expect(Date.now() - offAt).toBeGreaterThanOrEqual((INLINE_QUIET_TICKS - 1) * TICK_MS);
      await delay(60);
      expect(ports.map((p) => p.told)).toEqual([[true, false, true], [true, false, true], [true, false, true]]);
      expect(gateOf(bridge)).toMatchObject({ on: true, switches: 2 });
    } finally {
      await bridge.stop();
    }
  });

  it('bursts with short gaps between them (a rate-limited download) keep it closed through the gaps', async () => {
    const { bridge, ports } = await rig(1000);
    const [uplink] = ports;
    try {
      await waitFor('first tick', () => ports.every((p) => p.told.length >= 1), 2000);
      for (let n = 0; n < 8; n++) {
        uplink.inject(burst(200, 44000, `b${n}`));
        await delay(25); // fewer than INLINE_QUIET_TICKS ticks
      }
      expect(ports.map((p) => p.told)).toEqual([[true, false], [true, false], [true, false]]);
      expect(gateOf(bridge)).toMatchObject({ on: false, switches: 1 });
      // What an operator sees: a status line, and gauges (not counters) for the state.
      const snap = bridge.snapshot();
      expect(formatStatus(snap)).toContain('inline sends: off (traffic over the gate); gate 1000 frames/s, 1 switch(es)');
      const metrics = renderMetrics(snap);
      expect(metrics).toMatch(/# TYPE shadowvm_inline_sends_allowed gauge\nshadowvm_inline_sends_allowed(\{[^}]*\})? 0\n/);
      expect(metrics).toMatch(/\nshadowvm_inline_sends_max_fps(\{[^}]*\})? 1000\n/);
      expect(metrics).toMatch(/# TYPE shadowvm_inline_sends_switches_total counter\nshadowvm_inline_sends_switches_total(\{[^}]*\})? 1\n/);
    } finally {
      await bridge.stop();
    }
  });

  it('a few frames a tick stay under the gate: it never closes', async () => {
    const { bridge, ports } = await rig(2000);
    const [uplink] = ports;
    try {
      // 2 frames every 5 ms: about 400 a second.
      for (let i = 0; i < 20; i++) {
        uplink.inject(burst(2, 41000 + 2 * i, 'ping'));
        await delay(5);
      }
      expect(ports.every((p) => p.told.length >= 1 && p.told.every((on) => on))).toBe(true);
      expect(gateOf(bridge)).toMatchObject({ on: true, switches: 0 });
    } finally {
      await bridge.stop();
    }
  });

  it('without the option the ports are never told (their own setting stands), and the snapshot has no gate', async () => {
    const { bridge, ports } = await rig();
    try {
      ports[0].inject(burst(200, 43000, 'x'));
      await delay(60);
      expect(ports.map((p) => p.told)).toEqual([[], [], []]);
      expect(gateOf(bridge)).toBeUndefined();
      expect(formatStatus(bridge.snapshot())).not.toContain('inline sends');
      expect(renderMetrics(bridge.snapshot())).not.toContain('shadowvm_inline_sends');
    } finally {
      await bridge.stop();
    }
  });
});
