/**
 * Prometheus text exposition (format 0.0.4) of a BridgeSnapshot, and a tiny
 * HTTP server for it.
 *
 * In:  a snapshot function, called once per scrape.
 * Out: `GET /metrics` → `text/plain; version=0.0.4`; anything else 404 (405
 *      for other methods on /metrics).
 *
 * The server binds to loopback only, unless `allowRemote` says otherwise:
 * the counters name flows and interfaces.
 */
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { CHECKPOINT_REASONS } from '../replicate/replicator';
import { BridgeSnapshot, REPLICATION_STATES } from './snapshot';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Record<string, string>;
type Sample = [Labels, number];

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Label values: backslash, double quote and line feed are escaped (exposition format 0.0.4). */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** HELP text: backslash and line feed are escaped. */
function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** Builds the text one metric family at a time; each family's samples stay together. */
export class PrometheusText {
  private readonly lines: string[] = [];
  private readonly seen = new Set<string>();

  family(name: string, type: 'counter' | 'gauge', help: string, samples: Sample[]): this {
    if (!METRIC_NAME.test(name)) throw new Error(`metrics: bad metric name ${JSON.stringify(name)}`);
    if (this.seen.has(name)) throw new Error(`metrics: family ${name} written twice`);
    this.seen.add(name);
    this.lines.push(`# HELP ${name} ${escapeHelp(help)}`);
    this.lines.push(`# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) {
      const parts: string[] = [];
      for (const [k, v] of Object.entries(labels)) {
        if (!LABEL_NAME.test(k) || k.startsWith('__')) throw new Error(`metrics: bad label name ${JSON.stringify(k)} on ${name}`);
        parts.push(`${k}="${escapeLabelValue(v)}"`);
      }
      this.lines.push(`${name}${parts.length ? `{${parts.join(',')}}` : ''} ${formatValue(value)}`);
    }
    return this;
  }

  one(name: string, type: 'counter' | 'gauge', help: string, value: number): this {
    return this.family(name, type, help, [[{}, value]]);
  }

  toString(): string {
    return this.lines.length ? `${this.lines.join('\n')}\n` : '';
  }
}

/** The `/metrics` body for one snapshot. */
/** Stage report entries that are levels (they go up and down), exported as gauges. */
export const STAGE_LEVELS: ReadonlySet<string> = new Set(['active', 'carried', 'held_frames', 'held_bytes', 'holding']);

export function renderMetrics(s: BridgeSnapshot): string {
  const t = new PrometheusText();
  const port = (p: BridgeSnapshot['ports'][number]): Labels => ({ port: p.role, interface: p.name });
  t.family('shadowvm_port_rx_frames_total', 'counter', 'Frames received on a port.', s.ports.map((p) => [port(p), p.rxFrames]));
  t.family('shadowvm_port_rx_bytes_total', 'counter', 'Bytes received on a port.', s.ports.map((p) => [port(p), p.rxBytes]));
  t.family('shadowvm_port_tx_frames_total', 'counter', 'Frames sent on a port.', s.ports.map((p) => [port(p), p.txFrames]));
  t.family('shadowvm_port_tx_bytes_total', 'counter', 'Bytes sent on a port.', s.ports.map((p) => [port(p), p.txBytes]));
  t.family('shadowvm_port_rx_drops_total', 'counter', 'Frames the kernel or medium dropped before the bridge saw them.', s.ports.map((p) => [port(p), p.rxDrops]));
  t.family('shadowvm_port_tx_errors_total', 'counter', 'Frames the bridge could not send.', s.ports.map((p) => [port(p), p.txErrors]));

  t.one('shadowvm_flows', 'gauge', 'Flows in the flow table.', s.flows.active);
  t.one('shadowvm_flows_created_total', 'counter', 'Flows created.', s.flows.created);
  t.one('shadowvm_flows_evicted_total', 'counter', 'Flows evicted (idle or LRU).', s.flows.evicted);
  t.one('shadowvm_matched_bytes_total', 'counter', 'Bytes both replicas said alike.', s.bytesMatched);
  t.one('shadowvm_released_bytes_total', 'counter', 'Payload bytes of the primary released to the client after comparison.', s.bytesReleased);
  t.one('shadowvm_mismatches_total', 'counter', 'Divergences between primary and backup output.', s.mismatches);

  t.family('shadowvm_checkpoints_requested_total', 'counter', 'Checkpoints asked of the sync agent, by trigger.',
    CHECKPOINT_REASONS.map((reason) => [{ reason }, s.checkpoints.requested[reason] ?? 0]));
  t.family('shadowvm_checkpoints_total', 'counter', 'Checkpoints finished, by outcome.',
    [[{ outcome: 'done' }, s.checkpoints.done], [{ outcome: 'failed' }, s.checkpoints.failed]]);
  t.one('shadowvm_checkpoints_coalesced_total', 'counter', 'Triggers folded into an outstanding checkpoint.', s.checkpoints.coalesced);
  t.one('shadowvm_checkpoint_pending', 'gauge', '1 while a checkpoint answer is awaited.', s.checkpoints.pending ? 1 : 0);
  t.one('shadowvm_checkpoint_epoch', 'gauge', 'Epoch of the last checkpoint asked for.', s.checkpoints.epoch);
  if (s.checkpoints.lastMs !== undefined) {
    t.one('shadowvm_checkpoint_last_duration_seconds', 'gauge', 'Duration of the last successful checkpoint.', s.checkpoints.lastMs / 1000);
  }

  t.family('shadowvm_replica_role', 'gauge', 'Role of the replica behind each VM port: 1 for its current role.',
    s.replicas.flatMap((r) => ['primary', 'backup', 'promoted', 'dead'].map((role): Sample => [{ port: r.port, role }, r.role === role ? 1 : 0])));
  t.one('shadowvm_failovers_total', 'counter', 'Backups promoted because the primary died.', s.failover.count);
  t.one('shadowvm_failovers_refused_total', 'counter', 'Failovers not made: no backup, or a stale one.', s.failover.refused);
  t.one('shadowvm_backups_lost_total', 'counter', 'Backups that died (the primary then runs unchecked until re-protection).', s.failover.backupsLost);
  t.one('shadowvm_flows_carried_total', 'counter', 'Flows carried over to a promoted backup.', s.failover.flowsCarried);
  t.one('shadowvm_flows_unprotected_total', 'counter', 'Flows left with one replica (born without a backup, or whose backup died).', s.failover.flowsUnprotected);
  if (s.failover.last) {
    t.one('shadowvm_failover_last_promotion_seconds', 'gauge', 'Time from detecting the primary\'s death to promoting the backup, last failover.', s.failover.last.detectionToPromotionMs / 1000);
  }
  const stageSamples: Sample[] = [];
  const stageLevels: Sample[] = [];
  for (const [stage, counters] of Object.entries(s.stages)) {
    for (const [counter, value] of Object.entries(counters)) {
      if (STAGE_LEVELS.has(counter)) stageLevels.push([{ stage, level: counter }, value]);
      else stageSamples.push([{ stage, counter }, value]);
    }
  }
  t.family('shadowvm_stage_events_total', 'counter', 'Every counter each data-path stage keeps, in one shape.', stageSamples);
  t.family('shadowvm_stage_level', 'gauge', 'What each data-path stage holds now (flows, frames, bytes).', stageLevels);
  t.family('shadowvm_replication_state', 'gauge', 'Replication state: 1 for the current one.',
    REPLICATION_STATES.map((state) => [{ state }, state === s.state ? 1 : 0]));
  t.one('shadowvm_held_output_frames', 'gauge', 'Primary frames held until the backup says the same.', s.heldOutput.frames);
  t.one('shadowvm_held_output_bytes', 'gauge', 'Bytes of primary frames held until the backup says the same.', s.heldOutput.bytes);
  t.one('shadowvm_ingress_held_frames_total', 'counter', 'Client frames held while a checkpoint ran.', s.ingress.heldFrames);
  t.one('shadowvm_ingress_hold_dropped_total', 'counter', 'Client frames dropped because the ingress hold was full.', s.ingress.holdDropped);

  const malformed: Sample[] = [];
  for (const [reason, bySide] of Object.entries(s.malformed)) {
    for (const [side, n] of Object.entries(bySide)) malformed.push([{ reason, side }, n]);
  }
  t.family('shadowvm_malformed_frames_total', 'counter', 'Frames that could not be decoded, by reason and sending side.', malformed);
  t.family('shadowvm_policy_actions_total', 'counter', 'Frames handled by policy rather than compared as a flow, by class and action.',
    Object.entries(s.policyActions).map(([key, n]) => {
      const cut = key.lastIndexOf('/');
      return [cut < 0 ? { class: key, action: '' } : { class: key.slice(0, cut), action: key.slice(cut + 1) }, n];
    }));

  t.one('shadowvm_agent_connected', 'gauge', '1 while a sync agent is connected.', s.agent.connected ? 1 : 0);
  t.family('shadowvm_agent_messages_total', 'counter', 'Sync agent protocol messages, by direction.',
    [[{ direction: 'in' }, s.agent.messagesIn], [{ direction: 'out' }, s.agent.messagesOut]]);
  t.one('shadowvm_agent_protocol_errors_total', 'counter', 'Malformed or out-of-place lines from the sync agent.', s.agent.protocolErrors);
  t.one('shadowvm_agent_heartbeat_timeouts_total', 'counter', 'Times the sync agent fell silent for longer than the heartbeat timeout.', s.agent.heartbeatTimeouts);
  t.one('shadowvm_uptime_seconds', 'gauge', 'Seconds since the bridge started.', s.uptimeSeconds);
  return t.toString();
}

// ───────────────────────── HTTP ─────────────────────────

/** The metrics server would listen where other hosts can reach it, and that was not allowed. */
export class MetricsBindError extends Error {
  constructor(readonly host: string) {
    super(`metrics: refusing to listen on ${host}: not a loopback address (counters name flows and interfaces); allow remote scraping explicitly to do this`);
    this.name = 'MetricsBindError';
  }
}

/** Whether `host` is a loopback address (127.0.0.0/8, ::1, or the name localhost). */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const v = isIP(h);
  if (v === 4) return h.split('.')[0] === '127';
  if (v === 6) {
    const lower = h.toLowerCase();
    if (lower === '::1' || lower === '0:0:0:0:0:0:0:1') return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
    return mapped !== null && mapped[1].split('.')[0] === '127';
  }
  return false;
}

export interface MetricsServerOptions {
  /** Allow a non-loopback address. */
  allowRemote?: boolean;
}

export interface MetricsServer {
  readonly host: string;
  /** The bound port (the ephemeral one if 0 was asked). */
  readonly port: number;
  readonly scrapes: number;
  close(): Promise<void>;
}

export type SnapshotFn = () => BridgeSnapshot | Promise<BridgeSnapshot>;

/** Serves `GET /metrics` on host:port. Throws `MetricsBindError` for a non-loopback host without `allowRemote`. */
export async function startMetricsServer(host: string, port: number, snapshotFn: SnapshotFn, options: MetricsServerOptions = {}): Promise<MetricsServer> {
  if (!options.allowRemote && !isLoopbackHost(host)) throw new MetricsBindError(host);
  let scrapes = 0;
  const server: Server = createServer((req, res) => {
    void serve(req, res);
  });

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
      return;
    }
    let body: string;
    try {
      body = renderMetrics(await snapshotFn());
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`metrics unavailable: ${(e as Error).message}\n`);
      return;
    }
    scrapes++;
    res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const boundPort = typeof address === 'object' && address ? address.port : port;
  return {
    host,
    port: boundPort,
    get scrapes() { return scrapes; },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
