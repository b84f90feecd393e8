import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfigObject, readConfigFile } from '../../../lib/cli/config-file';
import { UsageError } from '../../../lib/cli/errors';
import { ConfigError } from '../../../lib/pipeline/config';

describe('config files', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'op-config-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function file(name: string, text: string): string {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  }

  it('splits a file into the ports and metrics of `run` and the pipeline settings', () => {
    const cfg = parseConfigObject({ ports: { uplink: 'eth0', primary: 'vm1-p', backup: 'vm1-b' }, metrics: '127.0.0.1:9464', maxFlows: 100 });
    expect(cfg.run).toEqual({ ports: { uplink: 'eth0', primary: 'vm1-p', backup: 'vm1-b' }, metrics: '127.0.0.1:9464' });
    expect(cfg.pipeline).toEqual({ maxFlows: 100 });
  });

  it('takes the data-plane workers of `run` (what a systemd unit cannot pass as --workers)', () => {
    expect(parseConfigObject({ workers: 4, maxFlows: 100 }).run).toEqual({ ports: {}, workers: 4 });
    expect(parseConfigObject({ workers: 4, maxFlows: 100 }).pipeline).toEqual({ maxFlows: 100 });
  });

  it('rejects an unknown key inside ports, and lists the allowed ones', () => {
    expect(() => parseConfigObject({ ports: { client: 'eth0' } })).toThrow('invalid setting ports.client: unknown key; allowed keys in ports: uplink, primary, backup');
  });

  it.each([
    [{ ports: { uplink: 'a-name-longer-than-15' } }, 'ports.uplink', /a Linux interface name: it has 1 to 15 characters/],
    [{ ports: { primary: 'tap/0' } }, 'ports.primary', /no "\/", ":" or white space/],
    [{ ports: { backup: 7 } }, 'ports.backup', /must be a Linux interface name, got 7$/],
    [{ metrics: '9464' }, 'metrics', /HOST:PORT on loopback .*: not HOST:PORT, got "9464"$/],
    [{ workers: 0 }, 'workers', /got 0/],
    [{ workers: 1.5 }, 'workers', /whole number|integer/],
    [{ workers: 65 }, 'workers', /got 65/],
  ])('rejects %j naming %s', (obj, path, detail) => {
    let err: unknown;
    try { parseConfigObject(obj); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).setting).toBe(path);
    expect((err as Error).message).toMatch(detail);
  });

  it('names the file in a ConfigError read from it', () => {
    const path = file('bad.json', '{ "failover": { "announce": 1 } }');
    expect(() => readConfigFile(path)).toThrow(`${path}: invalid setting failover.announce: must be true or false, got 1`);
  });

  it('checks a flowPolicy table in a file, naming the file, the entry and the key', () => {
    const good = file('policy.json', JSON.stringify({ flowPolicy: [{ protocol: 'tcp', port: 22, action: 'pass' }, { cidr: 'fd00::/8', action: 'drop-backup-only' }] }));
    expect(readConfigFile(good).pipeline.flowPolicy).toHaveLength(2);
    const bad = file('bad-policy.json', JSON.stringify({ flowPolicy: [{ port: 22, action: 'pass' }, { cidr: '10.0.0.0/8', action: 'pass' }, { cidr: '10.0.0/8', action: 'pass' }] }));
    expect(() => readConfigFile(bad)).toThrow(`${bad}: invalid setting flowPolicy[2].cidr: must be a client address block`);
  });

  it('gives one UsageError for a missing file, text that is not JSON, and JSON that is not an object', () => {
    for (const [path, msg] of [
      [join(dir, 'absent.json'), /cannot read config file .*absent\.json: ENOENT/],
      [file('broken.json', '{ "maxFlows": '), /broken\.json is not valid JSON: /],
      [file('list.json', '[1, 2]'), /list\.json is not valid: it must hold one JSON object, not an array/],
    ] as const) {
      expect(() => readConfigFile(path)).toThrow(UsageError);
      expect(() => readConfigFile(path)).toThrow(msg);
    }
  });
});
