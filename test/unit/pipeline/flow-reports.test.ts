/**
 * Flow reports: flows in the table report from their own counters when
 * asked; flows that left it keep a report among the newest `flowReports`;
 * `reportList` finds the newest matching flows without reporting the rest.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { C, P, B, SYN_OPTS, harness } from '../../support/pipeline-harness';
import { tcpFrame } from '../../support/frames';
import { REPORT_SCAN_SLICE } from '../../../lib/pipeline/flows';
import { DEFAULT_PIPELINE_CONFIG } from '../../../lib/pipeline';

const client = (sport: number, s: Parameters<typeof tcpFrame>[0]) => tcpFrame({ from: 'client', sport, dport: 80, ...s });
const vm = (dport: number, s: Parameters<typeof tcpFrame>[0]) => tcpFrame({ from: 'vm', sport: 80, dport, ...s });

/** A connection from `port` that says `reply` (both replicas alike) and is then closed by both sides. */
function exchange(h: ReturnType<typeof harness>, port: number, t: number, reply = 'hello'): void {
  h.p.fromClient(client(port, { seq: C, flags: 'S', options: SYN_OPTS }), t);
  h.p.fromVm(PRIMARY, vm(port, { seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), t + 1);
  h.p.fromVm(BACKUP, vm(port, { seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), t + 2);
  h.p.fromClient(client(port, { seq: C + 1, ack: P + 1, flags: 'A' }), t + 3);
  h.p.fromVm(PRIMARY, vm(port, { seq: P + 1, ack: C + 1, flags: 'PA', payload: reply }), t + 4);
  h.p.fromVm(BACKUP, vm(port, { seq: B + 1, ack: C + 1, flags: 'PA', payload: reply }), t + 5);
}

describe('flow reports', () => {
  it('reports a flow in the table as it stands now, each time it is asked', () => {
    const h = harness();
    exchange(h, 40000, 10);
    expect(h.p.reports).toEqual([expect.objectContaining({ key: 'tcp 10.77.0.1:40000 > 10.77.0.2:80', releasedBytes: 5, matchedBytes: 5, mismatches: 0 })]);
    h.p.fromVm(PRIMARY, vm(40000, { seq: P + 6, ack: C + 1, flags: 'PA', payload: 'more' }), 20);
    h.p.fromVm(BACKUP, vm(40000, { seq: B + 6, ack: C + 1, flags: 'PA', payload: 'more' }), 21);
    expect(h.p.reports[0]).toMatchObject({ releasedBytes: 9, matchedBytes: 9 });
  });

  it('keeps the reports of flows that left the table, the newest `flowReports` of them, in birth order', () => {
    const h = harness({ maxFlows: 2, flowReports: 3 });
    for (let i = 0; i < 6; i++) exchange(h, 40000 + i, 100 * i, `reply ${i}`);
    // Two flows are in the table (40004, 40005); four were evicted, and the newest three reports are listed.
    expect(h.p.flows.size).toBe(2);
    expect(h.p.reports.map((r) => r.key.split(' ')[1])).toEqual(['10.77.0.1:40003', '10.77.0.1:40004', '10.77.0.1:40005']);
    // Evicted flows keep what they had done: the reply was matched and released before they left.
    expect(h.p.reports[0]).toMatchObject({ releasedBytes: 7, matchedBytes: 7 });
  });

  it('lists the newest flows whose name holds `match`, in birth order, at most `limit`', () => {
    const h = harness({ maxFlows: 8, flowReports: 100 });
    for (let i = 0; i < 12; i++) exchange(h, 41000 + i, 100 * i);
    const ports = (limit: number, match?: string) => h.p.reportList(limit, match).map((r) => Number(r.key.split(' ')[1].split(':')[1]));
    expect(ports(3)).toEqual([41009, 41010, 41011]);
    // 4100x: 41000–41009; the newest two of them, one evicted (41003 and older left the table) and one still in it.
    expect(ports(2, ':4100')).toEqual([41008, 41009]);
    expect(ports(20, ':4100')).toEqual([41000, 41001, 41002, 41003, 41004, 41005, 41006, 41007, 41008, 41009]);
    expect(ports(5, 'no such flow')).toEqual([]);
  });

  it('keeps no report of a flow that left when `flowReports` is 0, and lists none', () => {
    const h = harness({ maxFlows: 2, flowReports: 0 });
    for (let i = 0; i < 4; i++) exchange(h, 42000 + i, 100 * i);
    expect(h.p.reports).toEqual([]);
    expect(h.p.reportList(10)).toEqual([]);
  });

  it('reports the mismatches a flow saw, with a copy of its list that the caller may keep', () => {
    const h = harness();
    exchange(h, 43000, 10, 'primary');
    h.p.fromVm(PRIMARY, vm(43000, { seq: P + 8, ack: C + 1, flags: 'PA', payload: 'AAAA' }), 20);
    h.p.fromVm(BACKUP, vm(43000, { seq: B + 8, ack: C + 1, flags: 'PA', payload: 'BBBB' }), 21);
    const r = h.p.reports[0];
    expect(r.mismatches).toBe(1);
    expect(r.mismatchList).toHaveLength(1);
    r.mismatchList.length = 0;
    expect(h.p.reports[0].mismatchList).toHaveLength(1);
  });
});

describe('reportListSliced', () => {
  it('finds what reportList finds, and lets other work run between slices of the scan', async () => {
    const h = harness({ maxFlows: 3 * REPORT_SCAN_SLICE, flowReports: 100, policy: { ...DEFAULT_PIPELINE_CONFIG.policy, newFlowsPerSecond: 0 } });
    const n = 3 * REPORT_SCAN_SLICE - 10;
    for (let i = 0; i < n; i++) {
      h.p.fromClient(tcpFrame({ from: 'client', src: `10.9.${i >> 8}.${i & 255}`, sport: 40000, dport: 80, seq: C, flags: 'S' }), i + 1);
    }
    expect(h.p.flows.size).toBe(n);
    // Only the oldest flow's name holds 10.9.0.0:, so the scan must go through every flow to find it.
    const wanted = '10.9.0.0:';
    let turns = 0;
    let counting = true;
    const count = () => { if (counting) { turns++; setImmediate(count); } };
    setImmediate(count);
    const sliced = await h.p.reportListSliced(5, wanted);
    counting = false;
    expect(sliced.map((r) => r.key)).toEqual(h.p.reportList(5, wanted).map((r) => r.key));
    expect(sliced.map((r) => r.key)).toEqual(['tcp 10.9.0.0:40000 > 10.77.0.2:80']);
    // Two slice boundaries in ~3 slices: the other work ran at least that often meanwhile.
    expect(turns).toBeGreaterThanOrEqual(2);
  });
});
