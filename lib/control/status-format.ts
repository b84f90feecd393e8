/** A BridgeSnapshot as text for a terminal (`shadowvm status`). */
import { formatScheduling } from '../dataplane/scheduling';
import { CHECKPOINT_REASONS } from '../replicate/replicator';
import type { FlowReport } from '../pipeline/shadow-flow';
import { BridgeSnapshot, WorkerSummary } from './snapshot';

/** 1536 → "1.5 KiB"; below 1 KiB the exact count. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** Seconds as "3d 4h 05m 06s", dropping leading zero units. */
export function formatDuration(seconds: number): string {
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const pad = (x: number) => String(x).padStart(2, '0');
  if (d) return `${d}d ${h}h ${pad(m)}m ${pad(s)}s`;
  if (h) return `${h}h ${pad(m)}m ${pad(s)}s`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

/** Columns: the first left-aligned, the rest right-aligned, two spaces apart. */
export function formatTable(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

export function formatStatus(s: BridgeSnapshot): string {
  const out: string[] = [];
  const agent = s.agent.connected ? `connected${s.agent.name ? ` (${s.agent.name})` : ''}` : 'not connected';
  out.push(`bridge ${s.name}: ${s.state}, up ${formatDuration(s.uptimeSeconds)}, sync agent ${agent}`);
  if (s.dataPlane) out.push(formatScheduling(s.dataPlane));
  if (s.inlineSends) out.push(`inline sends: ${s.inlineSends.on ? 'on' : 'off (traffic over the gate)'}; gate ${s.inlineSends.maxFps} frames/s, ${s.inlineSends.switches} switch(es)`);
  if (s.replicas) out.push(`replicas: ${s.replicas.map((r) => `${r.port} ${r.role}`).join(', ')}`);
  const fo = s.failover;
  if (fo && (fo.count || fo.backupsLost || fo.refused || fo.deferred)) {
    const last = fo.last ? `; last: ${fo.last.cause} (${fo.last.detail}), ${fo.last.survivor} promoted ${fo.last.detectionToPromotionMs.toFixed(1)} ms after detection, ${fo.last.flowsCarried} flows carried, ${formatDuration(fo.last.agoSeconds)} ago` : '';
    const deferred = fo.deferred ? `, ${fo.deferred} waited for a checkpoint` : '';
    out.push(`failovers: ${fo.count} (${fo.refused} refused${deferred}), backups lost ${fo.backupsLost}, flows unprotected ${fo.flowsUnprotected}${last}`);
  }
  if (fo?.waiting) out.push(`failover waiting: ${fo.waiting.cause}, for the answer to checkpoint ${fo.waiting.epoch}`);
  out.push('');
  if (s.ports.length === 0) {
    out.push('ports: none');
  } else {
    // A VM port's role now (after a failover the first backup's port is the primary's), not the slot it started in.
    const roleNow = new Map((s.replicas ?? []).map((r) => [r.port, r.role]));
    out.push(...formatTable(
      ['role', 'interface', 'rx frames', 'rx bytes', 'tx frames', 'tx bytes', 'rx drops', 'tx errors'],
      s.ports.map((p) => [p.role === 'uplink' ? 'uplink' : roleNow.get(p.name) ?? p.role, p.name, String(p.rxFrames), formatBytes(p.rxBytes), String(p.txFrames), formatBytes(p.txBytes), String(p.rxDrops), String(p.txErrors)]),
    ));
    const rings = s.ports.filter((p) => p.ring);
    if (rings.length) {
      const total = rings.reduce((n, p) => n + p.ring!.bytes, 0);
      out.push(`receive rings (kernel memory, resident): ${rings.map((p) => `${p.name} ${p.ring!.frames} × ${formatBytes(p.ring!.frameSize)}${p.ring!.large ? ` + ${p.ring!.large.frames} × ${formatBytes(p.ring!.large.frameSize)}${p.ring!.large.fanout ? ' (fanout)' : ''}` : ''}`).join(', ')}; ${formatBytes(total)} in all`);
    }
  }
  if (s.workers) {
    out.push('');
    out.push(...formatWorkers(s.workers, s.ports));
  }
  out.push('');
  out.push(`flows: ${s.flows.active} active, ${s.flows.created} created, ${s.flows.evicted} evicted`);
  if (s.frameWait && s.frameWait.seconds.count > 0) {
    const w = s.frameWait;
    out.push(`frame wait: longest ${w.maxLast10sMs.toFixed(2)} ms in the last 10 s, ${w.maxLast60sMs.toFixed(2)} ms in the last minute, ${w.maxMs.toFixed(2)} ms since start; ${w.over10ms} breath(s) over 10 ms`);
    const by = w.stalls ? Object.entries(w.stalls.byCause).filter(([, n]) => n > 0) : [];
    const last = w.stalls?.recent[w.stalls.recent.length - 1];
    if (by.length && last) {
      const parts = Object.entries(last.parts).filter(([, v]) => v > 0).map(([c, v]) => `${c} ${v.toFixed(1)}`).join(', ');
      const during = last.during.length ? `; meanwhile ${last.during.join(', ')} ms` : '';
      out.push(`  over 10 ms, by the largest part: ${by.map(([c, n]) => `${c} ${n}`).join(', ')}; the last: ${last.waitMs.toFixed(1)} ms (${parts || 'no part measured'}${during})`);
    }
  }
  if (s.holdWait && s.holdWait.seconds.count > 0) {
    const w = s.holdWait;
    out.push(`output held for the backup: longest ${w.maxLast10sMs.toFixed(2)} ms in the last 10 s, ${w.maxLast60sMs.toFixed(2)} ms in the last minute, ${w.maxMs.toFixed(2)} ms since start`);
  }
  if (s.memory) {
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    const m = s.memory;
    out.push(`memory: ${mib(m.rssBytes)} MiB resident; data-plane heap ${mib(m.heapUsedBytes)} of ${mib(m.heapSizeBytes)} MiB in use, ${mib(m.externalBytes)} MiB outside it`);
  }
  out.push(`compared: ${formatBytes(s.bytesMatched)} matched, ${formatBytes(s.bytesReleased)} released, ${s.mismatches} mismatch${s.mismatches === 1 ? '' : 'es'}`);
  out.push(`held: ${s.heldOutput.frames} primary frames (${formatBytes(s.heldOutput.bytes)}) awaiting the backup; ingress held ${s.ingress.heldFrames} frames during checkpoints, ${s.ingress.holdDropped} dropped`);
  const c = s.checkpoints;
  const last = c.lastMs !== undefined ? `, last took ${c.lastMs.toFixed(1)} ms` : '';
  out.push(`checkpoints: ${c.done} done, ${c.failed} failed, ${c.coalesced} coalesced${c.pending ? `, #${c.epoch} pending` : ''}${last}`);
  out.push(...formatTable(['  reason', 'requested'], CHECKPOINT_REASONS.map((r) => [`  ${r}`, String(c.requested[r] ?? 0)])));
  const malformed = Object.entries(s.malformed);
  if (malformed.length) {
    out.push('');
    out.push(...formatTable(['malformed', 'client', 'primary', 'backup'], malformed.map(([reason, m]) => [reason, String(m.client), String(m.primary), String(m.backup)])));
  }
  const policy = Object.entries(s.policyActions);
  if (policy.length) {
    out.push('');
    out.push(`policy: ${policy.map(([k, n]) => `${k} ${n}`).join(', ')}`);
  }
  out.push('');
  out.push(`agent link: ${s.agent.messagesIn} messages in, ${s.agent.messagesOut} out, ${s.agent.protocolErrors} protocol errors, ${s.agent.heartbeatTimeouts} heartbeat timeouts`);
  return out.join('\n');
}

/** A data plane of several workers: one row each (the rest of the status is the whole bridge's), then any port a worker reads elsewhere than worker 0. */
function formatWorkers(workers: readonly WorkerSummary[], ports: BridgeSnapshot['ports']): string[] {
  const rows = workers.map((w) => [
    String(w.index), w.state, String(w.flowsActive), String(w.framesIn.client + w.framesIn.primary + w.framesIn.backup),
    `#${w.checkpointEpoch}`, w.heapUsedBytes !== undefined ? formatBytes(w.heapUsedBytes) : '-',
  ]);
  const moved = workers.flatMap((w) => Object.entries(w.portNames ?? {}).map(([role, name]) =>
    `worker ${w.index} reads the ${role} port on ${name}, worker 0 on ${ports.find((p) => p.role === role)?.name ?? '?'} (the name shown above)`));
  return [...formatTable(['worker', 'state', 'flows', 'frames in', 'checkpoint', 'heap'], rows), ...moved];
}

/** The `flows` reply as a table, most recent last. */
export function formatFlows(flows: readonly FlowReport[]): string {
  if (flows.length === 0) return 'no flows';
  return formatTable(
    ['flow', 'matched', 'released', 'mismatches'],
    flows.map((f) => [f.policy ? `${f.key} (${f.policy}: unprotected)` : f.key, formatBytes(f.matchedBytes), formatBytes(f.releasedBytes), String(f.mismatches)]),
  ).join('\n');
}
