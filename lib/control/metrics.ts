/**
 * Prometheus text exposition (format 0.0.4) of a BridgeSnapshot, and a tiny
 * HTTP server for it.
 *
 * In:  a snapshot function, called at most once per `cacheMs`.
 * Out: `GET /metrics` → `text/plain; version=0.0.4`; anything else 404 (405
 *      for other methods on /metrics).
 *
 * The server binds to loopback only, unless `allowRemote` says otherwise:
 * the counters name flows and interfaces.
 */
import { createServer, isIP, Server, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { CHECKPOINT_REASONS } from '../replicate/replicator';
import { MISMATCH_KINDS } from '../compare/tcp-stream';
import { STALL_CAUSES } from '../io/stall-causes';
import { LogFn, noLog } from './logger';
import { BridgeSnapshot, REPLICATION_STATES, WorkerSummary } from './snapshot';
import { UserFacingError } from '../errors';

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

  /** A histogram family: `name_bucket{le}` (cumulative, ending with +Inf), `name_sum`, `name_count`. */
  histogram(name: string, help: string, h: { buckets: [number, number][]; sum: number; count: number }): this {
    if (!METRIC_NAME.test(name)) throw new Error(`metrics: bad metric name ${JSON.stringify(name)}`);
    if (this.seen.has(name)) throw new Error(`metrics: family ${name} written twice`);
    this.seen.add(name);
    this.lines.push(`# HELP ${name} ${escapeHelp(help)}`);
    this.lines.push(`# TYPE ${name} histogram`);
    for (const [le, n] of h.buckets) this.lines.push(`${name}_bucket{le="${formatValue(le)}"} ${formatValue(n)}`);
    this.lines.push(`${name}_bucket{le="+Inf"} ${formatValue(h.count)}`);
    this.lines.push(`${name}_sum ${formatValue(h.sum)}`);
    this.lines.push(`${name}_count ${formatValue(h.count)}`);
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
  t.family('shadowvm_port_ring_bytes', 'gauge', 'Kernel memory of a port\'s receive ring, resident in the bridge process.', s.ports.filter((p) => p.ring).map((p) => [port(p), p.ring!.bytes]));
  t.family('shadowvm_port_ring_frames', 'gauge', 'Slots of a port\'s receive ring (with split rings: of the one for MTU-sized frames).', s.ports.filter((p) => p.ring).map((p) => [port(p), p.ring!.frames]));
  t.family('shadowvm_port_large_ring_frames', 'gauge', 'Slots of a port\'s second receive ring, for GSO super-frames (split rings).', s.ports.filter((p) => p.ring?.large).map((p) => [port(p), p.ring!.large!.frames]));
  t.family('shadowvm_port_rx_large_frames_total', 'counter', 'Frames received through a port\'s ring for GSO super-frames (split rings).', s.ports.filter((p) => p.rxLargeFrames !== undefined).map((p) => [port(p), p.rxLargeFrames!]));
  t.family('shadowvm_port_tx_errors_total', 'counter', 'Frames the bridge could not send.', s.ports.map((p) => [port(p), p.txErrors]));

  t.one('shadowvm_flows', 'gauge', 'Flows in the flow table.', s.flows.active);
  if (s.memory) {
    t.one('process_resident_memory_bytes', 'gauge', 'Resident memory of the bridge process (every thread).', s.memory.rssBytes);
    t.one('shadowvm_data_plane_heap_used_bytes', 'gauge', 'JavaScript heap in use by the data plane.', s.memory.heapUsedBytes);
    t.one('shadowvm_data_plane_heap_size_bytes', 'gauge', 'JavaScript heap the data plane holds, garbage included.', s.memory.heapSizeBytes);
    t.one('shadowvm_data_plane_external_memory_bytes', 'gauge', 'Memory outside the data plane heap held for its objects (packet copies, buffers).', s.memory.externalBytes);
  }
  if (s.dataPlane) {
    t.one('shadowvm_data_plane_realtime_priority', 'gauge', 'SCHED_RR priority of the data-plane thread; 0: the normal policy (see run --realtime).', s.dataPlane.policy === 'rr' ? s.dataPlane.priority : 0);
  }
  if (s.inlineSends) {
    t.one('shadowvm_inline_sends_allowed', 'gauge', 'Whether a small flush may now go out from the data plane itself (1) or only through the send thread (0): run --send-inline-max-fps.', s.inlineSends.on ? 1 : 0);
    t.one('shadowvm_inline_sends_max_fps', 'gauge', 'Frames taken in per second above which inline sends stop.', s.inlineSends.maxFps);
    t.one('shadowvm_inline_sends_switches_total', 'counter', 'Times the inline-send gate opened or closed.', s.inlineSends.switches);
  }
  if (s.frameWait) {
    t.histogram('shadowvm_frame_wait_seconds', 'Per breath: time from the arrival of its oldest frame in the ring to the end of the breath (every frame handled and sent).', s.frameWait.seconds);
    t.one('shadowvm_frame_wait_max_seconds', 'gauge', 'The longest frame wait in the last 60 s.', s.frameWait.maxLast60sMs / 1000);
    const stalls = s.frameWait.stalls;
    if (stalls) {
      t.family('shadowvm_frame_wait_stalls_total', 'counter', 'Breaths over 10 ms, by the largest part of their wait (gc, starved, late-wake, other-work, breath).',
        STALL_CAUSES.map((cause) => [{ cause }, stalls.byCause[cause] ?? 0]));
    }
  }
  if (s.holdWait) {
    t.histogram('shadowvm_hold_wait_seconds', 'Per release step: how long its oldest primary frame was held (for the backup\'s answer, or a checkpoint).', s.holdWait.seconds);
    t.one('shadowvm_hold_wait_max_seconds', 'gauge', 'The longest hold in the last 60 s.', s.holdWait.maxLast60sMs / 1000);
  }
  t.one('shadowvm_flows_created_total', 'counter', 'Flows created.', s.flows.created);
  t.one('shadowvm_flows_evicted_total', 'counter', 'Flows evicted (idle or LRU).', s.flows.evicted);
  t.one('shadowvm_matched_bytes_total', 'counter', 'Bytes both replicas said alike.', s.bytesMatched);
  t.one('shadowvm_released_bytes_total', 'counter', 'Payload bytes of the primary released to the client after comparison.', s.bytesReleased);
  t.family('shadowvm_mismatches_total', 'counter', 'Divergences between primary and backup output, by what differed.',
    MISMATCH_KINDS.map((kind) => [{ kind }, s.mismatchesByKind[kind] ?? 0]));

  t.family('shadowvm_checkpoints_requested_total', 'counter', 'Checkpoints asked of the sync agent, by trigger.',
    CHECKPOINT_REASONS.map((reason) => [{ reason }, s.checkpoints.requested[reason] ?? 0]));
  t.family('shadowvm_checkpoints_total', 'counter', 'Checkpoints finished, by outcome.',
    [[{ outcome: 'done' }, s.checkpoints.done], [{ outcome: 'failed' }, s.checkpoints.failed]]);
  t.one('shadowvm_checkpoints_coalesced_total', 'counter', 'Triggers folded into an outstanding checkpoint.', s.checkpoints.coalesced);
  t.one('shadowvm_checkpoint_moved_bytes_total', 'counter', 'State the sync agent said its checkpoints moved into the backup (COLO: dirty RAM; full copy: the whole migration stream).', s.checkpoints.bytesMoved ?? 0);
  t.one('shadowvm_checkpoint_moved_pages_total', 'counter', 'Memory pages the sync agent said its checkpoints moved (agents that count them).', s.checkpoints.pagesMoved ?? 0);
  t.one('shadowvm_checkpoint_pending', 'gauge', '1 while a checkpoint answer is awaited.', s.checkpoints.pending ? 1 : 0);
  t.one('shadowvm_checkpoint_epoch', 'gauge', 'Epoch of the last checkpoint asked for.', s.checkpoints.epoch);
  if (s.checkpoints.lastMs !== undefined) {
    t.one('shadowvm_checkpoint_last_duration_seconds', 'gauge', 'Duration of the last successful checkpoint.', s.checkpoints.lastMs / 1000);
  }
  t.histogram('shadowvm_checkpoint_duration_seconds', 'Durations of the successful checkpoints (asked until answered).',
    s.checkpoints.durationSeconds ?? { buckets: [], sum: 0, count: 0 });

  t.family('shadowvm_replica_role', 'gauge', 'Role of the replica behind each VM port: 1 for its current role.',
    s.replicas.flatMap((r) => ['primary', 'backup', 'promoted', 'dead'].map((role): Sample => [{ port: r.port, role }, r.role === role ? 1 : 0])));
  t.one('shadowvm_failovers_total', 'counter', 'Backups promoted because the primary died.', s.failover.count);
  t.one('shadowvm_failovers_refused_total', 'counter', 'Failovers not made: no backup, or a stale one.', s.failover.refused);
  t.one('shadowvm_failovers_deferred_total', 'counter', 'Failovers that waited for the sync agent\'s answer to a checkpoint in flight.', s.failover.deferred);
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
  const componentSamples: Sample[] = [];
  for (const [component, counters] of Object.entries(s.components ?? {})) {
    for (const [counter, value] of Object.entries(counters)) componentSamples.push([{ component, counter }, value]);
  }
  t.family('shadowvm_component_events_total', 'counter', 'Counters of the control plane (agent link, control socket, metrics server): connections, requests, connections closed for abuse, idleness or slowness.', componentSamples);
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
  if (s.workers) renderWorkers(t, s.workers);
  t.one('shadowvm_uptime_seconds', 'gauge', 'Seconds since the bridge started.', s.uptimeSeconds);
  return t.toString();
}

/** A data plane of several workers (run --workers): the families above are the whole bridge's; these tell the workers apart. */
function renderWorkers(t: PrometheusText, workers: readonly WorkerSummary[]): void {
  const worker = (w: WorkerSummary): Labels => ({ worker: String(w.index) });
  t.family('shadowvm_worker_flows', 'gauge', 'Flows in a data-plane worker\'s flow table.', workers.map((w) => [worker(w), w.flowsActive]));
  t.family('shadowvm_worker_frames_total', 'counter', 'Frames a data-plane worker\'s pipeline took in, by sending side (client, primary, backup).',
    workers.flatMap((w) => Object.entries(w.framesIn).map(([side, n]): Sample => [{ ...worker(w), side }, n])));
  t.family('shadowvm_worker_checkpoint_epoch', 'gauge', 'Epoch of the last checkpoint a data-plane worker asked for (each worker numbers its own).', workers.map((w) => [worker(w), w.checkpointEpoch]));
  t.family('shadowvm_worker_replication_state', 'gauge', 'A data-plane worker\'s own replication state: 1 for the current one.',
    workers.flatMap((w) => REPLICATION_STATES.map((state): Sample => [{ ...worker(w), state }, state === w.state ? 1 : 0])));
  t.family('shadowvm_worker_heap_used_bytes', 'gauge', 'JavaScript heap in use by a data-plane worker\'s thread.',
    workers.filter((w) => w.heapUsedBytes !== undefined).map((w) => [worker(w), w.heapUsedBytes!]));
}

// ───────────────────────── HTTP ─────────────────────────

/** The metrics server would listen where other hosts can reach it, and that was not allowed. */
export class MetricsBindError extends UserFacingError {
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
  /** The text is rendered at most once per this many ms; scrapes in between get the same text. Default 1000. */
  cacheMs?: number;
  /** Connections at once; a new one beyond this closes the least recently active one. Default 16. */
  maxConnections?: number;
  /** Request bytes read ahead of the request being answered (pipelining); more closes the connection. Default 16 KiB. */
  maxPendingInputBytes?: number;
  /** A connection without progress (no request read, no response byte taken by the client) for this long is closed. Default 10 s. */
  idleTimeoutMs?: number;
  /** Where dropped clients are reported. */
  log?: LogFn;
}

export interface MetricsServerCounters {
  connections: number;
  /** Responses with status 200. */
  scrapes: number;
  /** Times the text was rendered (at most once per `cacheMs`). */
  renders: number;
  /** Connections closed for sending more than `maxPendingInputBytes` ahead, or an unreadable request. */
  closedAbusive: number;
  /** Connections closed after `idleTimeoutMs` without progress (idle, or not reading their responses). */
  closedIdle: number;
  /** Connections closed to admit a new one at `maxConnections`. */
  evicted: number;
}

export interface MetricsServer {
  readonly host: string;
  /** The bound port (the ephemeral one if 0 was asked). */
  readonly port: number;
  readonly scrapes: number;
  readonly counters: MetricsServerCounters;
  close(): Promise<void>;
}

export type SnapshotFn = () => BridgeSnapshot | Promise<BridgeSnapshot>;

/** Defaults of the scrape bounds (see `MetricsServerOptions`). */
export const METRICS_SERVER_LIMITS = {
  cacheMs: 1000,
  maxConnections: 16,
  maxPendingInputBytes: 16 * 1024,
  idleTimeoutMs: 10_000,
} as const;

/** A request head longer than this is refused (431) and the connection closed. */
const MAX_HEAD_BYTES = 8 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');
const EMPTY = Buffer.alloc(0);
const STATUS_TEXT: Record<number, string> = {
  200: 'OK', 400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed', 413: 'Content Too Large',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 505: 'HTTP Version Not Supported',
};

/** One request head, as much of it as the server needs. */
export interface ScrapeRequest {
  method: string;
  /** The path, without the query string. */
  path: string;
  /** Whether the client wants the connection kept open after the response. */
  keepAlive: boolean;
  /** The request announces a body (which this server never reads). */
  hasBody: boolean;
}

/** Reads a request head (without its final CRLF CRLF); null if it is not HTTP/1.x. */
export function parseRequestHead(head: string): ScrapeRequest | null {
  const lines = head.split('\r\n');
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/.exec(lines[0]);
  if (!m) return null;
  let connection = '';
  let hasBody = false;
  for (let i = 1; i < lines.length; i++) {
    const colon = lines[i].indexOf(':');
    if (colon <= 0) return null;
    const name = lines[i].slice(0, colon).trim().toLowerCase();
    const value = lines[i].slice(colon + 1).trim().toLowerCase();
    if (name === 'connection') connection = value;
    else if (name === 'transfer-encoding') hasBody = true;
    else if (name === 'content-length' && value !== '0') hasBody = true;
  }
  const http11 = m[3] === '1';
  const keepAlive = http11 ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
  return { method: m[1], path: m[2].split('?')[0], keepAlive, hasBody };
}

interface ScrapeConnection {
  readonly socket: Socket;
  readonly id: number;
  /** Bytes read and not yet parsed: the rest of a pipelined burst. */
  input: Buffer;
  /** A response is being produced or written. */
  busy: boolean;
  closed: boolean;
  /** The client has finished sending (half close): answer what is complete, then close. */
  peerEnded: boolean;
  lastActiveMs: number;
}

/**
 * Serves `GET /metrics` on host:port. Throws `MetricsBindError` for a
 * non-loopback host without `allowRemote`.
 *
 * Scraping must never cost the data path (same event loop), so this is a
 * deliberately small HTTP/1.1 server on `net` rather than `node:http`
 * (whose parser turns a whole pipelined burst into requests at once):
 * - the text is rendered at most once per `cacheMs` and every response
 *   shares that one Buffer;
 * - one request per connection at a time: nothing more is read until the
 *   response has been taken by the kernel, and the next pipelined request
 *   waits for the next event-loop turn; more than `maxPendingInputBytes`
 *   read ahead closes the connection;
 * - a client that does not read its responses stops making progress and is
 *   closed after `idleTimeoutMs`, as is an idle one;
 * - requests with a body, or heads over 8 KiB, are answered and the
 *   connection closed;
 * - at `maxConnections`, the least recently active connection (an idle one
 *   first) makes room for a new one.
 */
export async function startMetricsServer(host: string, port: number, snapshotFn: SnapshotFn, options: MetricsServerOptions = {}): Promise<MetricsServer> {
  if (!options.allowRemote && !isLoopbackHost(host)) throw new MetricsBindError(host);
  const log = options.log ?? noLog;
  const cacheMs = options.cacheMs ?? METRICS_SERVER_LIMITS.cacheMs;
  const maxConnections = options.maxConnections ?? METRICS_SERVER_LIMITS.maxConnections;
  const maxPendingInputBytes = options.maxPendingInputBytes ?? METRICS_SERVER_LIMITS.maxPendingInputBytes;
  const idleTimeoutMs = options.idleTimeoutMs ?? METRICS_SERVER_LIMITS.idleTimeoutMs;
  const counters: MetricsServerCounters = { connections: 0, scrapes: 0, renders: 0, closedAbusive: 0, closedIdle: 0, evicted: 0 };
  const open = new Set<ScrapeConnection>();
  let nextId = 1;
  let closing = false;

  let cached: { body: Buffer; atMs: number } | null = null;
  let rendering: Promise<Buffer> | null = null;
  /** The text, from the cache while it is fresh; concurrent scrapes share one render. */
  const body = (): Buffer | Promise<Buffer> => {
    if (cached && performance.now() - cached.atMs < cacheMs) return cached.body;
    if (!rendering) {
      rendering = (async () => {
        try {
          const text = Buffer.from(renderMetrics(await snapshotFn()), 'utf8');
          counters.renders++;
          cached = { body: text, atMs: performance.now() };
          return text;
        } finally {
          rendering = null;
        }
      })();
    }
    return rendering;
  };

  const server: Server = createServer({ allowHalfOpen: true }, (socket) => accept(socket));
  server.on('error', (e) => log('error', 'metrics-server-error', { error: e }));

  function accept(socket: Socket): void {
    socket.on('error', () => {});
    if (closing) {
      socket.destroy();
      return;
    }
    if (open.size >= maxConnections) evictOne();
    counters.connections++;
    const c: ScrapeConnection = { socket, id: nextId++, input: EMPTY, busy: false, closed: false, peerEnded: false, lastActiveMs: Date.now() };
    open.add(c);
    socket.setNoDelay(true);
    socket.setTimeout(idleTimeoutMs);
    socket.on('timeout', () => {
      counters.closedIdle++;
      const quiet = !c.busy && c.input.length === 0;
      drop(c, 'metrics-client-idle', { idleMs: idleTimeoutMs, why: quiet ? 'idle' : 'responses not read' }, quiet ? 'debug' : 'warn');
    });
    socket.on('close', () => forget(c));
    socket.on('end', () => {
      // The client is done sending (allowHalfOpen): answer what it sent, then close.
      c.peerEnded = true;
      next(c);
    });
    socket.on('data', (chunk: Buffer) => {
      if (c.closed) return;
      c.lastActiveMs = Date.now();
      c.input = c.input.length === 0 ? chunk : Buffer.concat([c.input, chunk]);
      if (c.busy && tooMuchAhead(c)) return;
      next(c);
    });
  }

  /** More requests sent ahead than a scraper ever would: a pipelining flood. Drops the connection. */
  function tooMuchAhead(c: ScrapeConnection): boolean {
    if (c.input.length <= maxPendingInputBytes) return false;
    counters.closedAbusive++;
    drop(c, 'metrics-client-dropped', { why: `more than ${maxPendingInputBytes} bytes of requests sent ahead of their responses` });
    return true;
  }

  /** Answers the next complete request of `c`, if it is not already answering one. */
  function next(c: ScrapeConnection): void {
    if (c.closed || c.busy) return;
    const end = c.input.indexOf(HEAD_END);
    if (end < 0) {
      if (c.peerEnded) {
        c.socket.end();
        return;
      }
      if (c.input.length > MAX_HEAD_BYTES) {
        counters.closedAbusive++;
        respond(c, 431, 'request head too long\n', null, false);
        return;
      }
      c.socket.resume();
      return;
    }
    // Read nothing more until this request is answered: the client's own buffers hold the rest back.
    c.socket.pause();
    if (end > MAX_HEAD_BYTES) {
      counters.closedAbusive++;
      respond(c, 431, 'request head too long\n', null, false);
      return;
    }
    const head = c.input.subarray(0, end).toString('latin1');
    c.input = c.input.length === end + HEAD_END.length ? EMPTY : c.input.subarray(end + HEAD_END.length);
    if (tooMuchAhead(c)) return;
    const req = parseRequestHead(head);
    if (!req) {
      counters.closedAbusive++;
      respond(c, 400, 'bad request\n', null, false);
      return;
    }
    // A body is never read: answer, then close, so its bytes are not taken for the next request.
    const keepAlive = req.keepAlive && !req.hasBody;
    if (req.path !== '/metrics') {
      respond(c, 404, 'not found: metrics are at /metrics\n', null, keepAlive, req.method === 'HEAD');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      respond(c, 405, 'method not allowed\n', 'Allow: GET, HEAD\r\n', keepAlive);
      return;
    }
    c.busy = true;
    const answer = (text: Buffer) => {
      c.busy = false;
      if (c.closed) return;
      counters.scrapes++;
      respond(c, 200, text, null, keepAlive, req.method === 'HEAD', METRICS_CONTENT_TYPE);
    };
    const fail = (e: unknown) => {
      c.busy = false;
      if (!c.closed) respond(c, 500, `metrics unavailable: ${(e as Error)?.message ?? String(e)}\n`, null, keepAlive);
    };
    try {
      const b = body();
      if (Buffer.isBuffer(b)) answer(b);
      else b.then(answer, fail);
    } catch (e) {
      fail(e);
    }
  }

  function respond(c: ScrapeConnection, status: number, content: string | Buffer, extraHeaders: string | null, keepAlive: boolean,
    headOnly = false, contentType = 'text/plain; charset=utf-8'): void {
    const bytes = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    const head = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? ''}\r\nContent-Type: ${contentType}\r\nContent-Length: ${bytes.length}\r\n`
      + `${extraHeaders ?? ''}Connection: ${keepAlive ? 'keep-alive' : 'close'}\r\n\r\n`;
    c.busy = true;
    const s = c.socket;
    s.cork();
    s.write(head, 'latin1');
    const written = () => {
      c.busy = false;
      if (c.closed) return;
      c.lastActiveMs = Date.now();
      if (!keepAlive) {
        s.end();
        return;
      }
      // The next pipelined request, if any, on the next turn: one request per connection per turn.
      setImmediate(() => next(c));
    };
    if (headOnly) s.write(EMPTY, written);
    else s.write(bytes, written);
    s.uncork();
  }

  function evictOne(): void {
    let victim: ScrapeConnection | null = null;
    for (const c of open) {
      const idle = !c.busy && c.input.length === 0;
      const victimIdle = victim !== null && !victim.busy && victim.input.length === 0;
      if (!victim || (idle && !victimIdle) || (idle === victimIdle && c.lastActiveMs < victim.lastActiveMs)) victim = c;
    }
    if (!victim) return;
    counters.evicted++;
    drop(victim, 'metrics-client-evicted', { why: `${maxConnections} connections open` }, 'info');
  }

  function drop(c: ScrapeConnection, event: string, fields: Record<string, unknown>, level: 'debug' | 'info' | 'warn' = 'warn'): void {
    if (c.closed) return;
    log(level, event, { connection: c.id, ...fields });
    forget(c);
    c.socket.destroy();
  }

  function forget(c: ScrapeConnection): void {
    c.closed = true;
    c.input = EMPTY;
    open.delete(c);
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
    get scrapes() { return counters.scrapes; },
    counters,
    close: () => new Promise<void>((resolve) => {
      closing = true;
      for (const c of [...open]) {
        forget(c);
        c.socket.destroy();
      }
      if (!server.listening) {
        resolve();
        return;
      }
      server.close(() => resolve());
    }),
  };
}
