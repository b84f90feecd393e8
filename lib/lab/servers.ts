/**
 * Real servers from Debian, started with identical configuration and content
 * inside the primary and the backup namespace: nginx (HTTP on 0.0.0.0:80 and
 * [::]:80), vsftpd (anonymous, read-only, passive mode on port 21) and
 * dnsmasq (DNS over UDP on port 53, answering `svc.lab`).
 *
 * Each replica has its own runtime directory under the lab's run directory
 * (`<runDir>/<role>/`): configs, pid files, logs, temp dirs and the content
 * root. Every server runs as a process-group leader registered in
 * `lab.processes`, so `teardownLab` kills it with all its children.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ContentDivergence, LAB_CONTENT_MTIME, writeLabContent } from './content';
import { sleep } from './exec';
import { Lab, LabNode, LabProcess, pidsInNamespace, processRunning } from './netns';
import { UserFacingError } from '../errors';

export type LabService = 'nginx' | 'vsftpd' | 'dnsmasq';
export const LAB_SERVICES: readonly LabService[] = ['nginx', 'vsftpd', 'dnsmasq'];

/** The name dnsmasq answers for (A → service IPv4, AAAA → service IPv6, TXT). */
export const LAB_DNS_NAME = 'svc.lab';
export const LAB_DNS_TXT = 'shadowvm lab service';
/**
 * The primary's default passive ports. vsftpd seeds rand() with the
 * microsecond of the session's first draw, and both replicas get the PASV
 * within a few microseconds of each other: now and then they seed alike and
 * pick the same port, whatever the range. So the backup's default range is
 * another one (LAB_BACKUP_FTP_PASV_PORTS), and the `227` replies always differ.
 */
export const LAB_FTP_PASV_PORTS = { min: 30000, max: 30499 } as const;
export const LAB_BACKUP_FTP_PASV_PORTS = { min: 30500, max: 30999 } as const;

export interface LabServerOptions {
  /** Default: all of LAB_SERVICES. */
  services?: readonly LabService[];
  /** Makes one byte of one file differ in the backup's content (primary keeps the original). */
  backupDivergence?: ContentDivergence;
  readyTimeoutMs?: number;
  /**
   * vsftpd's passive port range. By default the replicas get disjoint
   * ranges, so their `227` replies differ (the divergence the demo shows);
   * one port here makes them agree, so an FTP data connection is a replica
   * on both sides.
   */
  ftpPassivePorts?: { min: number; max: number };
  /** The backup's own range (default: ftpPassivePorts when given, else LAB_BACKUP_FTP_PASV_PORTS). */
  backupFtpPassivePorts?: { min: number; max: number };
}

export interface LabReplicaRuntime {
  readonly node: LabNode;
  /** Runtime directory of this replica's servers. */
  readonly dir: string;
  /** Document root of nginx and anonymous root of vsftpd. */
  readonly contentRoot: string;
}

export interface LabServers {
  readonly services: readonly LabService[];
  readonly primary: LabReplicaRuntime;
  readonly backup: LabReplicaRuntime;
}

/**
 * Puts the same file (`bytes`, named `name`) in both replicas' content roots,
 * with the lab's fixed mtime on it and on the root (writing it changed the
 * root's), so both servers describe it alike (Last-Modified, ETag, listings).
 */
export function serveOnBoth(servers: LabServers, name: string, bytes: Buffer | Uint8Array): void {
  for (const root of [servers.primary.contentRoot, servers.backup.contentRoot]) {
    const file = path.join(root, name);
    fs.writeFileSync(file, bytes, { mode: 0o644 });
    fs.utimesSync(file, LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
    fs.utimesSync(root, LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
  }
}

export class LabServerError extends UserFacingError {
  constructor(readonly service: LabService, readonly netns: string, message: string) {
    super(`${service} in ${netns}: ${message}`);
    this.name = 'LabServerError';
  }
}

function nginxConfig(dir: string, contentRoot: string): string {
  return `# shadowvm lab: identical on primary and backup
user root;
worker_processes 1;
daemon off;
master_process on;
pid ${dir}/nginx/nginx.pid;
error_log ${dir}/nginx/error.log notice;
events { worker_connections 256; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log ${dir}/nginx/access.log;
  client_body_temp_path ${dir}/nginx/tmp/body;
  proxy_temp_path ${dir}/nginx/tmp/proxy;
  fastcgi_temp_path ${dir}/nginx/tmp/fastcgi;
  uwsgi_temp_path ${dir}/nginx/tmp/uwsgi;
  scgi_temp_path ${dir}/nginx/tmp/scgi;
  sendfile on;
  keepalive_timeout 65;
  keepalive_requests 1000;
  server {
    listen 0.0.0.0:80;
    listen [::]:80 ipv6only=on;
    server_name svc.lab;
    root ${contentRoot};
    autoindex on;
    # ?rate=SIZE (bytes per second; k and m suffixes): nginx sends the answer no faster (limit_rate), as a
    # download site does; the lab's test of a timer-paced server.
    if ($arg_rate ~ "^[0-9]+[km]?$") { set $limit_rate $arg_rate; }
  }
}
`;
}

function vsftpdConfig(dir: string, contentRoot: string, pasv: { min: number; max: number } = LAB_FTP_PASV_PORTS): string {
  return `# shadowvm lab: identical on primary and backup
listen=YES
listen_ipv6=NO
listen_port=21
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_upload_enable=NO
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
no_anon_password=YES
anon_root=${contentRoot}
hide_ids=YES
pasv_enable=YES
pasv_min_port=${pasv.min}
pasv_max_port=${pasv.max}
port_enable=YES
connect_from_port_20=NO
dirmessage_enable=NO
ftpd_banner=shadowvm lab FTP
use_localtime=NO
xferlog_enable=YES
vsftpd_log_file=${dir}/vsftpd/vsftpd.log
secure_chroot_dir=${dir}/vsftpd/empty
isolate=NO
isolate_network=NO
seccomp_sandbox=NO
tcp_wrappers=NO
`;
}

function dnsmasqArgs(dir: string, node: LabNode): string[] {
  return [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--port=53',
    '--bind-interfaces',
    `--interface=${node.nsIf}`,
    `--address=/${LAB_DNS_NAME}/${node.ipv4}`,
    `--address=/${LAB_DNS_NAME}/${node.ipv6}`,
    `--txt-record=${LAB_DNS_NAME},${LAB_DNS_TXT}`,
    `--pid-file=${dir}/dnsmasq/dnsmasq.pid`,
    `--log-facility=${dir}/dnsmasq/dnsmasq.log`,
    '--log-queries',
    '--user=root',
    '--group=root',
  ];
}

function spawnInNetns(lab: Lab, node: LabNode, name: string, logFile: string, argv: string[]): LabProcess {
  const log = fs.openSync(logFile, 'a');
  try {
    // detached: the server leads its own process group, so teardown can
    // kill the group (vsftpd and nginx fork per session / worker).
    const child = spawn('ip', ['netns', 'exec', node.netns, ...argv], { detached: true, stdio: ['ignore', log, log] });
    if (child.pid === undefined) throw new LabServerError(name as LabService, node.netns, `could not spawn ${argv[0]}`);
    child.unref();
    const proc: LabProcess = { name, netns: node.netns, pid: child.pid, logFile };
    lab.processes.push(proc);
    return proc;
  } finally {
    fs.closeSync(log);
  }
}

interface ListenCheck {
  proto: 'tcp' | 'udp';
  /** Every one of these local addresses must be bound. */
  addresses: string[];
}

/**
 * Whether the server bound every address: read from /proc/PID/net/{tcp,udp}{,6}
 * of a process in the namespace (they list that namespace's sockets), not
 * with `ss`: starting a process would stall a bridge running in this one
 * (re-protection restarts servers while the bridge forwards).
 */
function listening(pid: number, check: ListenCheck): boolean {
  const bound = new Set<string>();
  for (const v6 of [false, true]) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/net/${check.proto}${v6 ? '6' : ''}`, 'utf8');
    } catch {
      return false;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4) continue;
      // TCP: LISTEN (0A); UDP: an unconnected socket (07).
      if (cols[3] !== (check.proto === 'tcp' ? '0A' : '07')) continue;
      const [addrHex, portHex] = cols[1].split(':');
      bound.add(`${procAddress(addrHex)}:${parseInt(portHex, 16)}`);
    }
  }
  return check.addresses.every((addr) => bound.has(canonicalAddress(addr)));
}

/** /proc/net address: 32-bit words in host (little-endian) order → 8 or 32 hex digits in network order. */
function procAddress(hex: string): string {
  let out = '';
  for (let w = 0; w < hex.length; w += 8) out += hex.slice(w, w + 8).match(/../g)!.reverse().join('');
  return out.toLowerCase();
}

/** "10.77.0.2:53" / "[fd77::2]:53" → the same form as procAddress, then the port. */
function canonicalAddress(text: string): string {
  const m = /^\[(.*)\]:(\d+)$/.exec(text) ?? /^([^:]*):(\d+)$/.exec(text);
  if (!m) return text;
  const [, host, port] = m;
  if (!host.includes(':')) return `${host.split('.').map((b) => Number(b).toString(16).padStart(2, '0')).join('')}:${port}`;
  const [head, tail] = host.includes('::') ? host.split('::') : [host, ''];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t];
  return `${groups.map((g) => g.padStart(4, '0')).join('').toLowerCase()}:${port}`;
}

function logTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-10).join('\n');
  } catch {
    return '(no log)';
  }
}

async function waitListening(service: LabService, proc: LabProcess, check: ListenCheck, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (listening(proc.pid, check)) return;
    if (!processRunning(proc.pid)) {
      throw new LabServerError(service, proc.netns, `exited before listening; log ${proc.logFile}:\n${logTail(proc.logFile)}`);
    }
    if (Date.now() > deadline) {
      throw new LabServerError(service, proc.netns, `not listening on ${check.proto} ${check.addresses.join(', ')} after ${timeoutMs} ms; log ${proc.logFile}:\n${logTail(proc.logFile)}`);
    }
    await sleep(50);
  }
}

/** Where a replica's servers keep their configs and content (as `startLabServers` wrote them). */
export function replicaRuntime(lab: Lab, node: LabNode): LabReplicaRuntime {
  const dir = path.join(lab.runDir, node.role);
  return { node, dir, contentRoot: path.join(dir, 'www') };
}

function prepareReplica(lab: Lab, node: LabNode, divergence: ContentDivergence | undefined, pasv?: { min: number; max: number }): LabReplicaRuntime {
  const dir = path.join(lab.runDir, node.role);
  const contentRoot = path.join(dir, 'www');
  for (const sub of ['nginx/tmp', 'vsftpd/empty', 'dnsmasq']) fs.mkdirSync(path.join(dir, sub), { recursive: true, mode: 0o755 });
  // vsftpd refuses a secure_chroot_dir that is writable by anyone but root.
  fs.chmodSync(path.join(dir, 'vsftpd/empty'), 0o755);
  fs.chmodSync(dir, 0o755);
  writeLabContent(contentRoot, divergence);
  fs.writeFileSync(path.join(dir, 'nginx/nginx.conf'), nginxConfig(dir, contentRoot));
  fs.writeFileSync(path.join(dir, 'vsftpd/vsftpd.conf'), vsftpdConfig(dir, contentRoot, pasv), { mode: 0o600 });
  return { node, dir, contentRoot };
}

async function startReplica(lab: Lab, replica: LabReplicaRuntime, services: readonly LabService[], timeoutMs: number): Promise<void> {
  const { node, dir } = replica;
  const waits: Promise<void>[] = [];
  if (services.includes('nginx')) {
    const proc = spawnInNetns(lab, node, 'nginx', path.join(dir, 'nginx/stderr.log'), [
      'nginx', '-p', `${dir}/nginx/`, '-c', `${dir}/nginx/nginx.conf`, '-e', `${dir}/nginx/error.log`,
    ]);
    waits.push(waitListening('nginx', proc, { proto: 'tcp', addresses: ['0.0.0.0:80', '[::]:80'] }, timeoutMs));
  }
  if (services.includes('vsftpd')) {
    const proc = spawnInNetns(lab, node, 'vsftpd', path.join(dir, 'vsftpd/stderr.log'), ['vsftpd', `${dir}/vsftpd/vsftpd.conf`]);
    waits.push(waitListening('vsftpd', proc, { proto: 'tcp', addresses: ['0.0.0.0:21'] }, timeoutMs));
  }
  if (services.includes('dnsmasq')) {
    const proc = spawnInNetns(lab, node, 'dnsmasq', path.join(dir, 'dnsmasq/stderr.log'), ['dnsmasq', ...dnsmasqArgs(dir, node)]);
    waits.push(waitListening('dnsmasq', proc, { proto: 'udp', addresses: [`${node.ipv4}:53`, `[${node.ipv6}]:53`] }, timeoutMs));
  }
  await Promise.all(waits);
}

/**
 * Writes content and configs for both replicas and starts the servers;
 * resolves once every server listens. On failure the already started
 * servers stay registered in `lab.processes` for `teardownLab` to kill.
 */
export async function startLabServers(lab: Lab, options: LabServerOptions = {}): Promise<LabServers> {
  const services = options.services ?? LAB_SERVICES;
  const timeoutMs = options.readyTimeoutMs ?? 10_000;
  const primary = prepareReplica(lab, lab.primary, undefined, options.ftpPassivePorts);
  const backup = prepareReplica(lab, lab.backup, options.backupDivergence, options.backupFtpPassivePorts ?? options.ftpPassivePorts ?? LAB_BACKUP_FTP_PASV_PORTS);
  await Promise.all([startReplica(lab, primary, services, timeoutMs), startReplica(lab, backup, services, timeoutMs)]);
  return { services, primary, backup };
}

/**
 * Starts a replica's servers afresh in its namespace (re-protection in the
 * netns lab): every process still in the namespace is killed first (stopped
 * ones included), then the same configs and content serve again.
 */
export async function restartReplicaServers(lab: Lab, replica: LabReplicaRuntime, services: readonly LabService[] = LAB_SERVICES, timeoutMs = 10_000): Promise<void> {
  const netns = replica.node.netns;
  const victims = lab.processes.filter((p) => p.netns === netns);
  for (const p of victims) {
    try { process.kill(-p.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  const inside = pidsInNamespace(netns);
  for (const pid of inside) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  const deadline = Date.now() + 3000;
  while ([...victims.map((p) => p.pid), ...inside].some(processRunning) && Date.now() < deadline) await sleep(10);
  for (const p of victims) lab.processes.splice(lab.processes.indexOf(p), 1);
  await startReplica(lab, replica, services, timeoutMs);
}

/**
 * wget's arguments for a download that stays on the wire at `rate` (wget's sizes: `500k`, `1m`), for the lab's
 * tests and demo: wget reads no faster, and the sender runs ahead of it only by what the client's receive buffer
 * holds (about 1 MB at 1m). One try, an error for an HTTP error, at most `seconds` without progress.
 *
 * Not curl: curl 7.88's --limit-rate does not hold (on loopback, 4 MiB at 8M took 0.02 s; 8 parallel 6 MiB at
 * 1M took 0.3-5.7 s), so a download meant to be in flight when a test strikes could be over already. Pacing in
 * the server (nginx limit_rate, `?rate=`) holds too, but the primary's and the backup's chunks then fall up to a
 * second apart: what paced-server tests, and not what the other tests are about.
 */
export function paced(out: string, url: string, rate: string, seconds: number): string[] {
  return ['-q', '--tries=1', `--timeout=${seconds}`, `--limit-rate=${rate}`, '-O', out, url];
}
