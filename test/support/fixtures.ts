/** Access to the recorded fixture triples in fixtures/<name>/{client,primary,backup}.pcap. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PcapRecord, readPcapFile } from '../../lib/io';

export const FIXTURES_DIR = join(__dirname, '..', '..', 'fixtures');

export interface FixtureFiles {
  name: string;
  client: string;
  primary: string;
  backup: string;
}

export function fixtureFiles(name: string): FixtureFiles {
  const dir = join(FIXTURES_DIR, name);
  const files = { name, client: join(dir, 'client.pcap'), primary: join(dir, 'primary.pcap'), backup: join(dir, 'backup.pcap') };
  for (const p of [files.client, files.primary, files.backup]) {
    if (!existsSync(p)) throw new Error(`fixture file ${p} is missing: re-record with scripts/record-fixtures.sh ${name} (root)`);
  }
  return files;
}

export function fixtureNames(): string[] {
  return readdirSync(FIXTURES_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(FIXTURES_DIR, d.name, 'client.pcap')))
    .map((d) => d.name)
    .sort();
}

/** [client, primary, backup] records of a fixture. */
export function loadFixture(name: string): PcapRecord[][] {
  const f = fixtureFiles(name);
  return [readPcapFile(f.client), readPcapFile(f.primary), readPcapFile(f.backup)];
}

export function expectedVerdicts(): Record<string, unknown> {
  return JSON.parse(readFileSync(join(FIXTURES_DIR, 'expected.json'), 'utf8'));
}
