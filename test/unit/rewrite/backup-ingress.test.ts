import { TcpOptions, decodeFrame, readTcpOptions } from '../../../lib/packet';
import { BackupIngressTranslator, MAX_HELD_PER_FLOW } from '../../../lib/rewrite';
import { TcpSpec, arpFrame, l4ChecksumIsValid, tcpFrame, udpFrame } from '../../support/frames';

const CLIENT_ISN = 0x11110000;
const PRIMARY_ISN = 0x50000000;
const BACKUP_ISN = 0x0badf00d;
const CLIENT_TS = 1_000;
const PRIMARY_TS = 700_000;
const BACKUP_TS = 900_000;

/** A connection as the client and each VM see it (client `clientPort` → VM 80); `link`: IP version, VLANs. */
function connection(link: TcpSpec = {}, isns = { primary: PRIMARY_ISN, backup: BACKUP_ISN }, clientPort = 40000) {
  const extra: TcpSpec = { ...link, sport: clientPort, dport: 80 };
  const fromVm: TcpSpec = { ...link, from: 'vm', sport: 80, dport: clientPort };
  const clientSyn = tcpFrame({ ...extra, seq: CLIENT_ISN, flags: 'S', options: { mss: 1460, sackOk: true, ts: [CLIENT_TS, 0], ws: 7 } });
  const synAck = (isn: number, ts: number) => tcpFrame({
    ...fromVm, seq: isn, ack: CLIENT_ISN + 1, flags: 'SA', options: { mss: 1460, sackOk: true, ts: [ts, CLIENT_TS], ws: 7 },
  });
  /** A client segment acknowledging `acked` bytes of the primary's output. */
  const clientAck = (acked: number, payload = '', sack?: [number, number][]) => tcpFrame({
    ...extra, seq: CLIENT_ISN + 1, ack: (isns.primary + 1 + acked) >>> 0, flags: payload ? 'PA' : 'A',
    options: { ts: [CLIENT_TS + 1, PRIMARY_TS], sack }, payload,
  });
  return { clientSyn, primarySynAck: synAck(isns.primary, PRIMARY_TS), backupSynAck: synAck(isns.backup, BACKUP_TS), clientAck };
}

function tsEcrOf(frame: Buffer): number {
  const f = decodeFrame(frame);
  const opts = new TcpOptions();
  expect(readTcpOptions(f, opts)).toBe(true);
  return f.dv.getUint32(opts.tsOffset + 4);
}

describe('BackupIngressTranslator', () => {
  it('passes the client SYN at once and unchanged: it names nothing in the VM space', () => {
    const t = new BackupIngressTranslator();
    const c = connection();
    const out = t.translateForBackup(c.clientSyn);
    expect(out).toEqual([c.clientSyn]);
    expect(out[0]).not.toBe(c.clientSyn); // a copy: the original goes to the primary
  });

  it('holds client ACKs until the backup SYN-ACK is seen, then releases them translated and in order', () => {
    const t = new BackupIngressTranslator();
    const c = connection();
    t.translateForBackup(c.clientSyn);
    expect(t.observeVmFrame('primary', c.primarySynAck)).toEqual([]);
    const held = [c.clientAck(0), c.clientAck(0, 'GET / HTTP/1.1\r\n\r\n')];
    for (const frame of held) expect(t.translateForBackup(frame)).toEqual([]);

    const released = t.observeVmFrame('backup', c.backupSynAck);
    expect(released).toHaveLength(2);
    released.forEach((frame) => {
      const f = decodeFrame(frame);
      expect(f.tcp.ack).toBe(BACKUP_ISN + 1);
      expect(f.tcp.seq).toBe(CLIENT_ISN + 1);
      expect(tsEcrOf(frame)).toBe(BACKUP_TS);
      expect(l4ChecksumIsValid(frame)).toBe(true);
    });
    expect(decodeFrame(released[1]).payload().toString()).toBe('GET / HTTP/1.1\r\n\r\n');
    expect(t.translated).toBe(3); // the SYN went through the translator too, unchanged
    // Released once only.
    expect(t.observeVmFrame('backup', c.backupSynAck)).toEqual([]);
  });

  it('translates later client frames at once: ack = client ack - primary ISN + backup ISN', () => {
    const t = new BackupIngressTranslator();
    const c = connection();
    t.translateForBackup(c.clientSyn);
    t.observeVmFrame('primary', c.primarySynAck);
    t.observeVmFrame('backup', c.backupSynAck);
    const clientAck = c.clientAck(12345, '', [[PRIMARY_ISN + 20000, PRIMARY_ISN + 30000]]);
    const out = t.translateForBackup(clientAck);
    expect(out).toHaveLength(1);
    const f = decodeFrame(out[0]);
    const ack = decodeFrame(clientAck).tcp.ack;
    expect(f.tcp.ack).toBe((ack - PRIMARY_ISN + BACKUP_ISN) >>> 0);
    expect(f.tcp.ack).toBe(BACKUP_ISN + 1 + 12345);
    const opts = new TcpOptions();
    readTcpOptions(f, opts);
    expect(f.dv.getUint32(opts.sackOffset)).toBe(BACKUP_ISN + 20000);
    expect(tsEcrOf(out[0])).toBe(BACKUP_TS);
    expect(l4ChecksumIsValid(out[0])).toBe(true);
  });

  it('translates across the 2^32 wrap when the backup ISN is below the primary ISN', () => {
    const isns = { primary: 0xfffffff0, backup: 0x00000100 };
    const t = new BackupIngressTranslator();
    const c = connection({ v6: true, vlan: [12] }, isns);
    t.translateForBackup(c.clientSyn);
    t.observeVmFrame('primary', c.primarySynAck);
    t.observeVmFrame('backup', c.backupSynAck);
    const clientAck = c.clientAck(0x40); // ack 0x00000031 in the primary's space, past the wrap
    expect(decodeFrame(clientAck).tcp.ack).toBe(0x31);
    const [out] = t.translateForBackup(clientAck);
    expect(decodeFrame(out).tcp.ack).toBe(0x00000100 + 1 + 0x40);
    expect(l4ChecksumIsValid(out)).toBe(true);
  });

  it('keeps at most MAX_HELD_PER_FLOW frames per flow, dropping the oldest and counting them', () => {
    const t = new BackupIngressTranslator();
    const c = connection();
    t.translateForBackup(c.clientSyn);
    t.observeVmFrame('primary', c.primarySynAck);
    const extra = 5;
    for (let i = 0; i < MAX_HELD_PER_FLOW + extra; i++) expect(t.translateForBackup(c.clientAck(i))).toEqual([]);
    expect(t.heldDropped).toBe(extra);
    const released = t.observeVmFrame('backup', c.backupSynAck);
    expect(released).toHaveLength(MAX_HELD_PER_FLOW);
    expect(released.map((frame) => decodeFrame(frame).tcp.ack - (BACKUP_ISN + 1))).toEqual(
      Array.from({ length: MAX_HELD_PER_FLOW }, (_, i) => i + extra),
    );
  });

  it('holds one flow without delaying another', () => {
    const t = new BackupIngressTranslator();
    const waiting = connection({}, undefined, 40001);
    t.translateForBackup(waiting.clientSyn);
    t.observeVmFrame('primary', waiting.primarySynAck);
    expect(t.translateForBackup(waiting.clientAck(0))).toEqual([]);
    // A flow picked up mid-stream (no SYN seen on either side): delta zero, passes unchanged.
    const midStream = tcpFrame({ sport: 40002, seq: 5, ack: 6, flags: 'A', options: { ts: [1, 2] } });
    expect(t.translateForBackup(midStream)).toEqual([midStream]);
  });

  it('does not release held frames on a backup segment that is not a SYN', () => {
    const t = new BackupIngressTranslator();
    const c = connection();
    t.translateForBackup(c.clientSyn);
    t.observeVmFrame('primary', c.primarySynAck);
    t.translateForBackup(c.clientAck(0));
    const backupData = tcpFrame({ from: 'vm', seq: BACKUP_ISN + 1, ack: CLIENT_ISN + 1, flags: 'PA', payload: 'early' });
    expect(t.observeVmFrame('backup', backupData)).toEqual([]);
    expect(t.observeVmFrame('backup', c.backupSynAck)).toHaveLength(1);
  });

  it('passes frames it does not translate as copies: UDP, ARP, malformed', () => {
    const t = new BackupIngressTranslator();
    for (const frame of [udpFrame({ payload: 'dns' }), arpFrame(), Buffer.alloc(10)]) {
      const out = t.translateForBackup(frame);
      expect(out).toEqual([frame]);
      expect(out[0]).not.toBe(frame);
      expect(t.observeVmFrame('backup', frame)).toEqual([]);
    }
  });
});
