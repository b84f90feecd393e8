/**
 * One shard of bench/shard-scale.ts: a whole Bridge (ports, pipeline, its
 * own lab agent) on a worker thread, whose AF_PACKET ports take only the
 * frames of shard `index` of `count` (lib/dataplane/shard.ts).
 *
 * A measurement prototype, not the product's multi-worker mode: each shard
 * has its own agent link and replicator, and nothing coordinates their
 * checkpoints. The bench runs the lab with HTTP Date normalization, where
 * the steady state asks for no checkpoint at all, and reports any that were
 * asked, so the figures are the data path's own cost per worker.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Bridge } from '../../lib/bridge';
import { runLabAgent, LabAgent } from '../../lib/agents/lab-agent';
import { shardFilter } from '../../lib/dataplane/shard';
import { AfPacketPort } from '../../lib/io/afpacket-port';
import { makePipelineConfig } from '../../lib/pipeline/config';

export interface ShardWorkerInit {
  count: number;
  index: number;
  ports: { uplink: string; primary: string; backup: string };
  agentSocket: string;
  name: string;
}

export type ShardWorkerReply =
  | { type: 'ready' }
  | { type: 'failed'; message: string }
  | { type: 'stats'; checkpoints: Record<string, number>; frames: Record<string, number>; flows: number; state: string }
  | { type: 'stopped' };

async function main(init: ShardWorkerInit): Promise<void> {
  const post = (m: ShardWorkerReply) => parentPort!.postMessage(m);
  let bridge: Bridge | null = null;
  let agent: LabAgent | null = null;
  try {
    const filter = init.count > 1 ? shardFilter(init.count, init.index) : undefined;
    const open = (ifname: string) => new AfPacketPort(ifname, { sweepOnWake: true, sendThread: true, ...(filter ? { filter } : {}) });
    const ports = { uplink: open(init.ports.uplink), primary: open(init.ports.primary), backup: open(init.ports.backup) };
    bridge = new Bridge(ports, {
      name: init.name,
      config: makePipelineConfig({ resync: 'align', normalize: { httpDate: true, httpDateToleranceMs: 2000 } }),
      agentSocket: init.agentSocket,
      log: (level, event, fields) => { if (level === 'warn' && event !== 'degraded') process.stderr.write(`shard ${init.index}: ${event} ${JSON.stringify(fields ?? {})}\n`); },
    });
    await bridge.start();
    agent = runLabAgent({ socketPath: init.agentSocket, name: `${init.name}-agent`, delayMs: 5, reconnectInitialMs: 20 });
    const b = bridge;
    const until = Date.now() + 10_000;
    while (b.pipeline.state !== 'COMPARING') {
      if (Date.now() > until) throw new Error(`shard ${init.index} did not reach COMPARING (state ${b.pipeline.state})`);
      await new Promise((r) => setTimeout(r, 10));
    }
    post({ type: 'ready' });
  } catch (e) {
    post({ type: 'failed', message: (e as Error).message });
    await agent?.stop();
    await bridge?.stop();
    return;
  }
  const b = bridge;
  parentPort!.on('message', async (m: { type: 'stats' | 'stop' }) => {
    if (m.type === 'stats') {
      post({
        type: 'stats',
        checkpoints: { ...b.pipeline.replicator.requested },
        frames: b.pipeline.frames,
        flows: b.pipeline.flowsCreated,
        state: b.pipeline.state,
      });
    } else {
      await agent?.stop();
      await b.stop();
      post({ type: 'stopped' });
      parentPort!.close();
    }
  });
}

if (parentPort) void main(workerData as ShardWorkerInit);
