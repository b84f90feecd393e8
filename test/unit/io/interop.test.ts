/**
 * Our files against real tools: if tcpdump and tshark read what we write,
 * and we read what tshark writes, the formats agree with libpcap/wiretap,
 * not only with each other.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PcapRecord, parsePcap, readPcapFile, writePcapFile } from '../../../lib/io';
import { classicPcap, ethernetFrame } from '../../support/pcap-builders';

const TCPDUMP = '/usr/bin/tcpdump';
const TSHARK = '/usr/bin/tshark';
const T0 = 1_700_000_000_123_456;

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'shadowvm-io-')); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs a tool that must be installed: a missing tool fails the test, saying what to install. */
function run(tool: string, debianPackage: string, args: string[]): { stdout: string; stderr: string } {
  if (!existsSync(tool)) throw new Error(`${tool} is missing; install the Debian package "${debianPackage}" (apt-get install ${debianPackage})`);
  const result = spawnSync(tool, args, { encoding: 'utf8', timeout: 30_000 });
  if (result.status !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${result.status ?? result.signal}: ${result.stderr}`);
  return { stdout: result.stdout, stderr: result.stderr };
}

const sample = Array.from({ length: 25 }, (_, i) => ({ frame: ethernetFrame(i, 46 + 37 * i), timeUs: T0 + i * 1_000_001 }));
const summary = (records: readonly PcapRecord[]) => records.map((r) => ({ frame: r.frame.toString('hex'), timeUs: r.timeUs }));

describe('interoperability with capture tools', () => {
  it('tcpdump reads a file PcapWriter wrote, every packet at its microsecond', () => {
    const path = join(dir, 'ours.pcap');
    writePcapFile(path, sample);
    const { stdout, stderr } = run(TCPDUMP, 'tcpdump', ['-r', path, '-nn', '-tt']);
    expect(stderr).toMatch(/link-type EN10MB/);
    // One summary line per packet; indented lines are tcpdump's hex dump of an unknown ethertype.
    const packetLines = stdout.split('\n').filter((line) => /^\d/.test(line));
    expect(packetLines).toHaveLength(sample.length);
    // -tt prints seconds.microseconds since the epoch.
    const printed = (timeUs: number) => `${Math.floor(timeUs / 1e6)}.${String(timeUs % 1e6).padStart(6, '0')}`;
    expect(packetLines.map((line) => line.split(' ')[0])).toEqual(sample.map((r) => printed(r.timeUs)));
  });

  it('reads back the pcapng tshark makes from our pcap: same frames, same microseconds', () => {
    const ours = join(dir, 'ours-us.pcap');
    const converted = join(dir, 'theirs-us.pcapng');
    writePcapFile(ours, sample);
    run(TSHARK, 'tshark', ['-r', ours, '-F', 'pcapng', '-w', converted]);
    const back = readPcapFile(converted);
    expect(back.length).toBe(sample.length);
    expect(summary(back)).toEqual(summary(readPcapFile(ours)));
  });

  it('reads back the nanosecond pcapng tshark makes from a nanosecond pcap', () => {
    const ns = join(dir, 'ns.pcap');
    const converted = join(dir, 'theirs-ns.pcapng');
    const file = classicPcap(sample.map((r, i) => ({ frame: r.frame, sec: Math.floor(r.timeUs / 1e6), fraction: 123_456_789 + i })), { resolution: 'ns' });
    writeFileSync(ns, file);
    run(TSHARK, 'tshark', ['-r', ns, '-F', 'pcapng', '-w', converted]);
    const back = readPcapFile(converted);
    expect(back.length).toBe(sample.length);
    expect(summary(back)).toEqual(summary(parsePcap(file, ns)));
  });
});
