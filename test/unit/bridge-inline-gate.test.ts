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
import { join } from 'node:path';
import { monotonicUs } from '../../lib/clock';
import { LineClient, tempDir, waitFor } from './agents/socket-helpers';
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

      // 1,000 frames at once: over 1,000 a second however late the next tick runs, up to a second.
      uplink.inject(burst(1000, 40000, 'q'));
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
      await waitFor('first tick', () => ports.every((p) => p.told.length >= 1), 2000);
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

  it('a backup moved to a fresh port by a checkpoint, and the survivor of a failover, get the gate\'s state at the next tick', async () => {
    const tmp = tempDir('gate');
    const uplink = new GatedPort('up0'), primary = new GatedPort('p0'), backup = new GatedPort('b0');
    const opened: GatedPort[] = [];
    const bridge = new Bridge({ uplink, primary, backup }, {
      name: 'gate-move',
      config: makePipelineConfig({ resync: 'copy' }),
      agentSocket: join(tmp.dir, 'agent.sock'),
      inlineSendsMaxFps: 1000,
      openPort: (ifname: string) => { const p = new GatedPort(ifname); opened.push(p); return p; },
    });
    await bridge.start();
    const agent = await LineClient.connect(join(tmp.dir, 'agent.sock'));
    try {
      await agent.next();
      agent.send({ type: 'hello', version: 3, role: 'agent', name: 'gate-agent' });
      const first = await agent.next() as { epoch: number };
      agent.send({ type: 'checkpoint-done', epoch: first.epoch, ms: 1, bytes: 0 });
      await waitFor('COMPARING', () => bridge.pipeline.state === 'COMPARING', 3000);
      // Busy: the gate closes on the three ports.
      uplink.inject(burst(200, 45000, 'load'));
      await waitFor('gate off', () => [uplink, primary, backup].every((p) => p.told.includes(false)), 2000);
      // Keep it closed while the agent moves the backup to a fresh port.
      const keepBusy = setInterval(() => uplink.inject(burst(50, 46000, 'more')), 5);
      try {
        expect(bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
        const cp = await agent.next() as { type: string; epoch: number };
        expect(cp.type).toBe('checkpoint');
        agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 2, bytes: 1, port: 'b1' });
        // The new backup starts with its own setting; at the next tick it is told the gate's: closed.
        await waitFor('the moved backup told', () => opened.length === 1 && opened[0].told.length > 0, 3000);
        expect(opened[0].told[0]).toBe(false);
        // The primary dies: the moved backup survives as the new primary and keeps the closed gate.
        agent.send({ type: 'primary-down', reason: 'test' });
        await waitFor('failed over', () => bridge.pipeline.failover.failovers === 1, 3000);
      } finally {
        clearInterval(keepBusy);
      }
      expect(opened[0].told.every((on) => on === false)).toBe(true);
      // Quiet again: the survivor is opened with the rest.
      await waitFor('gate on again', () => opened[0].told.at(-1) === true && uplink.told.at(-1) === true, 2000);
    } finally {
      agent.close();
      await bridge.stop();
      tmp.remove();
    }
  });
});
