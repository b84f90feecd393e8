/** The replay report as text for a terminal. */
import { ReplayReport } from './replay';

export function formatReplayReport(r: ReplayReport): string {
  const lines: string[] = [];
  lines.push(`inputs: ${r.inputs.client} client, ${r.inputs.primary} primary, ${r.inputs.backup} backup frames; final state ${r.state}`);
  lines.push('');
  lines.push('flows:');
  if (r.flows.length === 0) lines.push('  (none)');
  for (const f of r.flows) {
    const verdict = f.mismatches === 0 ? 'agree' : `${f.mismatches} mismatch${f.mismatches > 1 ? 'es' : ''}`;
    lines.push(`  ${f.key}`);
    lines.push(`    matched ${f.matchedBytes} B, released ${f.releasedBytes} B in ${f.releasedFrames} frames: ${verdict}`);
    for (const m of f.mismatchList) {
      const where = m.kind.startsWith('datagram') ? `datagram ${m.position + 1}, byte ${m.offset}` : m.offset < 0 ? 'the SYN' : `stream offset ${m.offset}`;
      lines.push(`    mismatch (${m.kind}) at ${where}`);
      const from = m.excerptOffset !== m.offset && m.offset >= 0 ? ` (from offset ${m.excerptOffset})` : '';
      lines.push(`      primary said${from}: ${m.primary}`);
      lines.push(`      backup said${from}:  ${m.backup}`);
    }
  }
  lines.push('');
  lines.push(`checkpoints: ${r.checkpoints.length}`);
  for (const c of r.checkpoints) {
    const what = c.kind === 'reprotect' ? 're-protection (nothing in a replay builds a new backup)' : c.reason;
    lines.push(`  #${c.epoch} ${what}${c.flow ? ` (${c.flow})` : ''}: ${c.outcome}${c.coalesced ? `, ${c.coalesced} coalesced` : ''}`);
  }
  lines.push('');
  lines.push(`failovers: ${r.failovers.length}${r.failovers.length ? ` (roles at the end: ${r.roles})` : ''}`);
  for (const f of r.failovers) {
    const ms = ((f.promotedUs - f.detectedUs) / 1000).toFixed(1);
    lines.push(`  #${f.epoch} ${f.cause}: ${f.detail}`);
    lines.push(`    ${f.survivor} promoted ${ms} ms after the cause was first seen; ${f.flowsCarried} flow${f.flowsCarried === 1 ? '' : 's'} carried, `
      + `${f.flowsLost} lost, ${f.backlogFrames} backlog frames sent at once, ${f.discardedFrames} held frames of the dead primary discarded`);
  }
  lines.push('');
  lines.push(`released to the client: ${r.released.frames} frames, ${r.released.bytes} bytes`);
  if (r.heldAtEnd.frames) lines.push(`still held at the end (never agreed): ${r.heldAtEnd.frames} frames, ${r.heldAtEnd.bytes} bytes`);
  lines.push(`backup frames kept from the client: ${r.backupFramesSuppressed}`);
  const errs = Object.entries(r.errors);
  lines.push(`malformed input: ${errs.length === 0 ? 'none' : ''}`);
  for (const [reason, c] of errs) lines.push(`  ${reason}: client ${c.client}, primary ${c.primary}, backup ${c.backup}`);
  const pol = Object.entries(r.policy);
  if (pol.length) lines.push(`policy: ${pol.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (r.badTcpOptions) lines.push(`frames with malformed TCP options: ${r.badTcpOptions}`);
  for (const p of r.divergenceFiles) lines.push(`divergence capture: ${p}`);
  return lines.join('\n');
}
