import { request } from 'node:http';
import { escapeLabelValue, isLoopbackHost, METRICS_CONTENT_TYPE, MetricsBindError, MetricsServer, renderMetrics, startMetricsServer } from '../../../lib/control/metrics';
import { snapshotOf } from '../../../lib/control/snapshot';
import { DEFAULT_PIPELINE_CONFIG, PipelineOutputs, ShadowPipeline } from '../../../lib/pipeline';
import { sampleSnapshot } from './sample-snapshot';

// ───────────── a small parser for the text exposition format 0.0.4 ─────────────

interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface ParsedFamily {
  name: string;
  type: string;
  help: string;
  samples: ParsedSample[];
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*';
const LABEL_VALUE = '(?:[^"\\\\\\n]|\\\\[\\\\"n])*';
const VALUE = '(?:[+-]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][+-]?\\d+)?|NaN|[+-]Inf)';
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{((?:${LABEL}="${LABEL_VALUE}")(?:,${LABEL}="${LABEL_VALUE}")*)?,?\\})? (${VALUE})(?: -?\\d+)?$`);
const PAIR_RE = new RegExp(`(${LABEL})="(${LABEL_VALUE})"`, 'g');
const HELP_RE = new RegExp(`^# HELP (${NAME}) ((?:[^\\\\\\n]|\\\\[\\\\n])*)$`);
const TYPE_RE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);

function unescape(v: string): string {
  return v.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c));
}

function parseValue(v: string): number {
  if (v === 'NaN') return NaN;
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  return Number(v);
}

/** Parses line by line; throws on anything the format does not allow. */
function parseExposition(text: string): Map<string, ParsedFamily> {
  expect(text.endsWith('\n')).toBe(true);
  const families = new Map<string, ParsedFamily>();
  const seenSamples = new Set<string>();
  let current: ParsedFamily | null = null;
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    let m: RegExpExecArray | null;
    if ((m = HELP_RE.exec(line))) {
      if (families.has(m[1])) throw new Error(`${where}: family declared twice`);
      current = { name: m[1], type: 'untyped', help: unescape(m[2]), samples: [] };
      families.set(m[1], current);
      return;
    }
    if ((m = TYPE_RE.exec(line))) {
      if (!current || current.name !== m[1] || current.samples.length) throw new Error(`${where}: TYPE must follow its HELP and precede its samples`);
      current.type = m[2];
      return;
    }
    if (line.startsWith('#')) throw new Error(`${where}: unexpected comment`);
    if (!(m = SAMPLE_RE.exec(line))) throw new Error(`${where}: not a sample line`);
    const own = current !== null && (m[1] === current.name
      || ((current as ParsedFamily).type === 'histogram' && ['_bucket', '_sum', '_count'].some((x) => m![1] === `${current!.name}${x}`)));
    if (!current || !own) throw new Error(`${where}: sample outside its family`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(PAIR_RE)) {
      if (k in labels) throw new Error(`${where}: label ${k} twice`);
      labels[k] = unescape(v);
    }
    const id = `${m[1]}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seenSamples.has(id)) throw new Error(`${where}: duplicate sample`);
    seenSamples.add(id);
    current.samples.push({ name: m[1], labels, value: parseValue(m[3]) });
  });
  return families;
}

function value(families: Map<string, ParsedFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const f = families.get(name);
  const s = f?.samples.find((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value;
}

// ─────────────────────────────── tests ───────────────────────────────

describe('renderMetrics', () => {
  const text = renderMetrics(sampleSnapshot());
  const families = parseExposition(text);

  it('writes valid exposition format 0.0.4, every family with HELP and TYPE', () => {
    expect(families.size).toBeGreaterThan(20);
    for (const f of families.values()) {
      expect(f.help.length).toBeGreaterThan(0);
      expect(['counter', 'gauge', 'histogram']).toContain(f.type);
      if (f.type === 'counter') expect(f.name.endsWith('_total')).toBe(true);
      expect(f.name.startsWith('shadowvm_')).toBe(true);
    }
  });

  it('labels port counters by role and escapes interface names', () => {
    expect(value(families, 'shadowvm_port_rx_frames_total', { port: 'uplink' })).toBe(1000);
    expect(value(families, 'shadowvm_port_tx_errors_total', { port: 'primary' })).toBe(1);
    expect(value(families, 'shadowvm_port_rx_drops_total', { port: 'uplink' })).toBe(2);
    // Receive rings: only the ports that have one (the backup's here has none, as a cap port).
    expect(value(families, 'shadowvm_port_ring_bytes', { port: 'uplink' })).toBe(36_700_160);
    expect(value(families, 'shadowvm_port_ring_frames', { port: 'primary' })).toBe(4096);
    // Split rings (the primary's here): the second ring's slots, and the frames that came through it.
    expect(value(families, 'shadowvm_port_large_ring_frames', { port: 'primary' })).toBe(155);
    expect(families.get('shadowvm_port_large_ring_frames')!.samples.map((s) => s.labels.port)).toEqual(['primary']);
    expect(value(families, 'shadowvm_port_rx_large_frames_total', { port: 'primary' })).toBe(120);
    expect(families.get('shadowvm_port_rx_large_frames_total')!.samples).toHaveLength(1);
    expect(families.get('shadowvm_port_ring_bytes')!.samples.map((s) => s.labels.port)).toEqual(['uplink', 'primary']);
    expect(families.get('shadowvm_port_rx_frames_total')!.samples.find((s) => s.labels.port === 'primary')!.labels.interface).toBe('tap "p"\\0\nx');
    expect(text).toContain('interface="tap \\"p\\"\\\\0\\nx"');
  });

  it('carries the data path counters', () => {
    expect(value(families, 'shadowvm_flows')).toBe(12);
    expect(value(families, 'shadowvm_matched_bytes_total')).toBe(654_321);
    expect(value(families, 'shadowvm_released_bytes_total')).toBe(650_000);
    expect(families.get('shadowvm_mismatches_total')!.samples.map((x) => [x.labels.kind, x.value]))
      .toEqual([['data', 1], ['syn', 0], ['syn-options', 1], ['fin', 0], ['rst', 0], ['datagram', 0], ['datagram-window', 0]]);
    expect(value(families, 'shadowvm_ingress_held_frames_total')).toBe(33);
    expect(value(families, 'shadowvm_malformed_frames_total', { reason: 'truncated-ipv4', side: 'backup' })).toBe(2);
    expect(value(families, 'shadowvm_policy_actions_total', { class: 'ethertype-0x88cc', action: 'drop' })).toBe(4);
  });

  it('counts checkpoints by reason, all reasons present, and by outcome', () => {
    const reasons = families.get('shadowvm_checkpoints_requested_total')!.samples.map((s) => s.labels.reason);
    expect(reasons).toEqual(['mismatch', 'timeout', 'queue', 'periodic', 'manual']);
    expect(value(families, 'shadowvm_checkpoints_requested_total', { reason: 'timeout' })).toBe(1);
    expect(value(families, 'shadowvm_checkpoints_total', { outcome: 'done' })).toBe(3);
    expect(value(families, 'shadowvm_checkpoints_total', { outcome: 'failed' })).toBe(1);
    expect(value(families, 'shadowvm_checkpoints_coalesced_total')).toBe(7);
    expect(value(families, 'shadowvm_checkpoint_last_duration_seconds')).toBe(0.0125);
  });

  it('exports checkpoint durations as a cumulative histogram in seconds, ending with +Inf = count', () => {
    const h = families.get('shadowvm_checkpoint_duration_seconds')!;
    expect(h.type).toBe('histogram');
    const buckets = h.samples.filter((x) => x.name === 'shadowvm_checkpoint_duration_seconds_bucket');
    expect(buckets.map((b) => b.labels.le)).toEqual(['0.005', '0.01', '0.025', '+Inf']);
    expect(buckets.map((b) => b.value)).toEqual([1, 2, 3, 3]);
    expect(h.samples.find((x) => x.name === 'shadowvm_checkpoint_duration_seconds_count')!.value).toBe(3);
    expect(h.samples.find((x) => x.name === 'shadowvm_checkpoint_duration_seconds_sum')!.value).toBeCloseTo(0.0245);
  });

  it('shows the replication state as 1 for the current state and 0 for the others', () => {
    const states = families.get('shadowvm_replication_state')!.samples;
    expect(states.map((s) => [s.labels.state, s.value])).toEqual([['COMPARING', 0], ['CHECKPOINTING', 1], ['DEGRADED', 0], ['FAILED_OVER', 0]]);
  });

  it('carries the agent link counters', () => {
    expect(value(families, 'shadowvm_agent_connected')).toBe(1);
    expect(value(families, 'shadowvm_agent_protocol_errors_total')).toBe(1);
    expect(value(families, 'shadowvm_agent_messages_total', { direction: 'in' })).toBe(20);
  });

  it('escapes backslash, double quote and newline in label values', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
  });

  it('renders a bridge with no ports and no malformed frames as valid text', () => {
    const s = { ...sampleSnapshot(), ports: [], malformed: {}, policyActions: {} };
    const f = parseExposition(renderMetrics(s));
    expect(f.get('shadowvm_port_rx_frames_total')!.samples).toEqual([]);
  });
});

describe('snapshotOf', () => {
  it('reads the counters of a live pipeline', () => {
    const sent: number[] = [];
    const outputs: PipelineOutputs = {
      toReplica: () => {}, toClient: () => {},
      sendCheckpoint: (req) => sent.push(req.epoch),
      log: () => {},
    };
    const p = new ShadowPipeline(DEFAULT_PIPELINE_CONFIG, outputs, 0, true);
    p.fromClient(Buffer.alloc(6), 10);
    p.request('manual', undefined, 20);
    p.request('mismatch', 'tcp a > b', 30);
    const s = snapshotOf(p, {
      name: 'lab', startedMs: 1000, nowMs: 4000, ports: [],
      agent: { connected: true, messagesIn: 0, messagesOut: 1, protocolErrors: 0, heartbeatTimeouts: 0 },
    });
    expect(sent).toEqual([1]);
    expect(s).toMatchObject({
      name: 'lab',
      uptimeSeconds: 3,
      state: 'CHECKPOINTING',
      checkpoints: { epoch: 1, requested: { manual: 1, mismatch: 0 }, coalesced: 1, pending: true, done: 0 },
      malformed: { 'truncated-ethernet': { client: 1, primary: 0, backup: 0 } },
    });
    p.checkpointDone(1, 40, 7);
    const after = snapshotOf(p, { name: 'lab', startedMs: 0, nowMs: 0, ports: [], agent: s.agent });
    expect(after.checkpoints).toMatchObject({ done: 1, pending: false, lastMs: 7 });
    expect(after.checkpoints.durationSeconds!.count).toBe(1);
    expect(after.checkpoints.durationSeconds!.buckets.find(([le]) => le === 0.01)![1]).toBe(1);
    expect(after.checkpoints.durationSeconds!.buckets.find(([le]) => le === 0.005)![1]).toBe(0);
    expect(after.state).toBe('COMPARING');
    parseExposition(renderMetrics(after));
  });
});

describe('startMetricsServer', () => {
  let server: MetricsServer | null = null;
  afterEach(async () => {
    await server?.close();
    server = null;
  });

  function get(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
      });
      req.on('error', reject);
      req.end();
    });
  }

  it('serves GET /metrics on an ephemeral loopback port', async () => {
    let calls = 0;
    server = await startMetricsServer('127.0.0.1', 0, () => { calls++; return sampleSnapshot(); });
    expect(server.port).toBeGreaterThan(0);
    const res = await get(server.port, '/metrics');
    expect(res.status).toBe(200);
    expect(res.type).toBe(METRICS_CONTENT_TYPE);
    expect(value(parseExposition(res.body), 'shadowvm_flows')).toBe(12);
    expect(calls).toBe(1);
    expect(server.scrapes).toBe(1);
    expect((await get(server.port, '/metrics?x=1')).status).toBe(200);
  });

  it('answers 404 elsewhere and 405 for other methods', async () => {
    server = await startMetricsServer('127.0.0.1', 0, sampleSnapshot);
    expect((await get(server.port, '/')).status).toBe(404);
    expect((await get(server.port, '/metrics/x')).status).toBe(404);
    expect((await get(server.port, '/metrics', 'POST')).status).toBe(405);
    const head = await get(server.port, '/metrics', 'HEAD');
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
  });

  it('answers 500 when the snapshot cannot be taken, and keeps serving', async () => {
    let fail = true;
    server = await startMetricsServer('127.0.0.1', 0, async () => {
      if (fail) throw new Error('pipeline busy');
      return sampleSnapshot();
    });
    const res = await get(server.port, '/metrics');
    expect(res.status).toBe(500);
    expect(res.body).toContain('pipeline busy');
    fail = false;
    expect((await get(server.port, '/metrics')).status).toBe(200);
  });

  it('refuses a non-loopback address unless remote scraping is allowed', async () => {
    await expect(startMetricsServer('0.0.0.0', 0, sampleSnapshot)).rejects.toBeInstanceOf(MetricsBindError);
    await expect(startMetricsServer('::', 0, sampleSnapshot)).rejects.toBeInstanceOf(MetricsBindError);
    await expect(startMetricsServer('example.com', 0, sampleSnapshot)).rejects.toThrow(/not a loopback address/);
    server = await startMetricsServer('0.0.0.0', 0, sampleSnapshot, { allowRemote: true });
    expect((await get(server.port, '/metrics')).status).toBe(200);
  });

  it('knows which addresses are loopback', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', 'localhost.example.com', '']) expect(isLoopbackHost(h)).toBe(false);
  });
});
