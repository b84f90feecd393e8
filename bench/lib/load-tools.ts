/**
 * The lab bench's load generators and probes: wrk, iperf3 and ping, each an
 * external program run inside a lab namespace (`ip netns exec`) as a child
 * process, never in this Node process. That matters: the bridge under test
 * runs in this process's event loop, so every run here is asynchronous (a
 * synchronous exec would stall the bridge and deadlock the client it waits for).
 *
 * In:  a namespace, a target, a duration.
 * Out: the parsed figures, plus the raw exit status and the tail of the
 *      output when a run failed or could not be parsed (a failed run is a
 *      result to report, not an exception).
 */
import { execFile } from 'node:child_process';

export interface ExecResult {
  /** Exit status; null when killed (timeout). */
  code: number | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `cmd` in `netns` without blocking the event loop; never rejects. */
export function execInNetns(netns: string, cmd: string, args: readonly string[], timeoutMs: number): Promise<ExecResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', netns, cmd, ...args], { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; killed?: boolean; signal?: string }) | null;
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          timedOut: Boolean(e?.killed),
          stdout: stdout ?? '',
          stderr: stderr ?? (e ? e.message : ''),
          ms: Date.now() - started,
        });
      });
  });
}

function tail(text: string, lines = 6): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

function failureText(r: ExecResult): string {
  const why = r.timedOut ? `timed out after ${r.ms} ms` : `exit ${r.code}`;
  return `${why}: ${tail(r.stderr || r.stdout)}`;
}

// ------------------------------------------------------------------ percentiles

/** Nearest-rank percentile (p in (0, 100]) of unsorted samples; NaN when empty. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

// ------------------------------------------------------------------ wrk

export interface WrkResult {
  ok: boolean;
  requests: number;
  seconds: number;
  requestsPerSecond: number;
  /** connect, read, write, timeout. */
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  non2xx3xx: number;
  /** Latency distribution under load (wrk --latency), ms. */
  latencyP50Ms: number;
  latencyP99Ms: number;
  error?: string;
}

function toMs(value: string, unit: string): number {
  const v = Number(value);
  switch (unit) {
    case 'us': return v / 1000;
    case 'ms': return v;
    case 's': return v * 1000;
    case 'm': return v * 60_000;
    default: return NaN;
  }
}

export function parseWrk(out: string): Omit<WrkResult, 'ok' | 'error'> {
  const reqs = /(\d+) requests in ([\d.]+)(us|ms|s|m),/.exec(out);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const lat = (p: string) => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1], m[2]) : NaN;
  };
  return {
    requests: reqs ? Number(reqs[1]) : NaN,
    seconds: reqs ? toMs(reqs[2], reqs[3]) / 1000 : NaN,
    requestsPerSecond: rps ? Number(rps[1]) : NaN,
    socketErrors: sock
      ? { connect: Number(sock[1]), read: Number(sock[2]), write: Number(sock[3]), timeout: Number(sock[4]) }
      : { connect: 0, read: 0, write: 0, timeout: 0 },
    non2xx3xx: non ? Number(non[1]) : 0,
    latencyP50Ms: lat('50'),
    latencyP99Ms: lat('99'),
  };
}

export interface WrkOptions { threads: number; connections: number; seconds: number }

export async function runWrk(netns: string, url: string, o: WrkOptions): Promise<WrkResult> {
  const r = await execInNetns(netns, 'wrk', [`-t${o.threads}`, `-c${o.connections}`, `-d${o.seconds}s`, '--latency', url], (o.seconds + 15) * 1000);
  const parsed = parseWrk(r.stdout);
  const ok = r.code === 0 && Number.isFinite(parsed.requestsPerSecond);
  return { ok, ...parsed, ...(ok ? {} : { error: failureText(r) }) };
}

// ------------------------------------------------------------------ ping

export interface PingResult {
  ok: boolean;
  sent: number;
  received: number;
  /** Per-reply round trip times, ms, in arrival order. */
  rttMs: number[];
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  error?: string;
}

export function parsePing(out: string): { sent: number; received: number; rttMs: number[] } {
  const rttMs: number[] = [];
  for (const m of out.matchAll(/icmp_seq=\d+ .*time=([\d.]+) ms/g)) rttMs.push(Number(m[1]));
  const summary = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  return { sent: summary ? Number(summary[1]) : NaN, received: summary ? Number(summary[2]) : rttMs.length, rttMs };
}

export async function runPing(netns: string, target: string, count: number, intervalS: number): Promise<PingResult> {
  const r = await execInNetns(netns, 'ping', ['-n', '-c', String(count), '-i', String(intervalS), '-W', '1', target], (count * intervalS + 10) * 1000);
  const p = parsePing(r.stdout);
  const ok = p.rttMs.length > 0;
  return {
    ok,
    ...p,
    p50Ms: percentile(p.rttMs, 50),
    p99Ms: percentile(p.rttMs, 99),
    maxMs: p.rttMs.length ? Math.max(...p.rttMs) : NaN,
    ...(ok && p.received === p.sent ? {} : { error: ok ? `${p.sent - p.received} of ${p.sent} lost` : failureText(r) }),
  };
}

// ------------------------------------------------------------------ iperf3

export interface IperfResult {
  ok: boolean;
  /** What the receiver (the server in the primary namespace) counted. */
  receivedGbps: number;
  sentGbps: number;
  retransmits: number;
  /** Wall time of the whole client run (includes the final result exchange). */
  wallMs: number;
  error?: string;
}

interface IperfJson {
  error?: string;
  end?: {
    sum_sent?: { bits_per_second?: number; retransmits?: number };
    sum_received?: { bits_per_second?: number };
  };
}

export function parseIperfJson(out: string): IperfJson | undefined {
  const start = out.indexOf('{');
  if (start < 0) return undefined;
  try {
    return JSON.parse(out.slice(start)) as IperfJson;
  } catch {
    return undefined;
  }
}

export async function runIperf(netns: string, target: string, seconds: number): Promise<IperfResult> {
  const r = await execInNetns(netns, 'iperf3', ['-c', target, '-t', String(seconds), '-J', '--connect-timeout', '3000'], (seconds + 20) * 1000);
  const j = parseIperfJson(r.stdout);
  const recv = j?.end?.sum_received?.bits_per_second;
  const sent = j?.end?.sum_sent?.bits_per_second;
  const ok = r.code === 0 && typeof recv === 'number' && !j?.error;
  return {
    ok,
    receivedGbps: typeof recv === 'number' ? recv / 1e9 : NaN,
    sentGbps: typeof sent === 'number' ? sent / 1e9 : NaN,
    retransmits: j?.end?.sum_sent?.retransmits ?? NaN,
    wallMs: r.ms,
    ...(ok ? {} : { error: j?.error ? `iperf3: ${j.error}${r.timedOut ? ' (killed: timed out)' : ''}` : failureText(r) }),
  };
}

/**
 * The summary an iperf3 server printed (its log): the receiver line of the
 * last test, or its last error, or the last line.
 */
export function iperfServerSummary(log: string): string {
  const lines = log.split('\n').map((l) => l.trim()).filter(Boolean);
  const errors = lines.filter((l) => /error/i.test(l));
  const receiver = lines.filter((l) => /\breceiver$/.test(l));
  const accepted = lines.filter((l) => /Accepted connection/.test(l)).length;
  const parts = [`${accepted} control connection(s) accepted`];
  if (receiver.length) parts.push(`receiver: ${receiver[receiver.length - 1].replace(/^\[\s*\d+\]\s*/, '').replace(/\s+/g, ' ')}`);
  if (errors.length) parts.push(`last error: ${errors[errors.length - 1]}`);
  if (!receiver.length && !errors.length && accepted === 0) parts.push('no test seen');
  return parts.join('; ');
}

// ------------------------------------------------------------------ curl (sanity)

/** Fetches a URL from the namespace: status and size, or why not. */
export async function fetchStatus(netns: string, url: string): Promise<{ ok: boolean; status: number; bytes: number; error?: string }> {
  const r = await execInNetns(netns, 'curl', ['-sS', '-o', '/dev/null', '--max-time', '5', '-w', '%{http_code} %{size_download}', url], 10_000);
  const m = /^(\d+) (\d+)/.exec(r.stdout.trim());
  if (r.code !== 0 || !m) return { ok: false, status: 0, bytes: 0, error: failureText(r) };
  return { ok: m[1] === '200', status: Number(m[1]), bytes: Number(m[2]) };
}
