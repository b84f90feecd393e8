/**
 * SO_PEERCRED (root): a socket made reachable by mistake still lets only
 * root and the bridge's own user in. The control and agent sockets are
 * loosened on purpose (world-writable socket, traversable folder) and user
 * nobody connects: refused at once, counted, logged; root still gets in.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ControlSocket, queryControlSocket } from '../../lib/control/control-socket';
import { AgentLink } from '../../lib/replicate/agent-client';
import { peerCheckAvailable } from '../../lib/control/peer';
import { requireRoot } from '../support/lab-helpers';
import { exitWithin, spawnAsNobody, NOBODY } from './hostile-helpers';
import { watchChild } from '../support/lab-helpers';
import { tempDir } from '../unit/agents/socket-helpers';
import { sampleSnapshot } from '../unit/control/sample-snapshot';

/** Connects, sends a line, prints what comes back and how the connection ended. */
const CLIENT = `
const net = require('net');
const s = net.connect(process.argv[1]);
let got = '';
s.on('connect', () => s.write(process.argv[2] + '\\n'));
s.on('data', (d) => { got += d; });
s.on('error', (e) => { console.log('error ' + e.code); });
s.on('close', () => { console.log('closed, got ' + JSON.stringify(got)); process.exit(0); });
setTimeout(() => { console.log('still open, got ' + JSON.stringify(got)); process.exit(0); }, 1500);
`;

describe('peer credentials on the bridge sockets', () => {
  beforeAll(() => requireRoot('hostile-peer.test.ts'));

  it('has the addon that reads SO_PEERCRED', () => {
    expect(peerCheckAvailable()).toBe(true);
  });

  it('refuses user nobody on a control socket that was loosened by mistake, and still answers root', async () => {
    const tmp = tempDir('peer-ctl');
    const dir = join(tmp.dir, 'run');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'control.sock');
    const events: string[] = [];
    const control = new ControlSocket({ path, handlers: { status: () => sampleSnapshot(), checkpoint: () => ({ requested: false, epoch: 0, state: 'COMPARING' }), flows: () => [] }, log: (_l, e) => events.push(e) });
    try {
      await control.listen();
      chmodSync(tmp.dir, 0o755);
      chmodSync(dir, 0o755);
      chmodSync(path, 0o666);
      const nobody = spawnAsNobody(CLIENT, [path, '{"cmd":"status"}']);
      expect(await exitWithin(nobody, 5000)).toBe(0);
      expect(nobody.output()).toMatch(/closed, got ""/);
      expect(control.counters.refusedPeer).toBe(1);
      expect(events).toContain('control-peer-refused');
      const root = await queryControlSocket(path, { cmd: 'status' });
      expect(root.ok).toBe(true);
    } finally {
      await control.close();
      tmp.remove();
    }
  });

  it('refuses user nobody on a loosened agent socket: it never becomes the agent', async () => {
    const tmp = tempDir('peer-agent');
    const dir = join(tmp.dir, 'run');
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'agent.sock');
    const link = new AgentLink({ socketPath: path, name: 'peer-test' }, {
      connected: () => {}, disconnected: () => {}, checkpointDone: () => {}, checkpointFailed: () => {},
      heartbeat: () => {}, primaryDown: () => {}, backupDown: () => {},
    });
    try {
      await link.listen();
      chmodSync(tmp.dir, 0o755);
      chmodSync(dir, 0o755);
      chmodSync(path, 0o666);
      const nobody = spawnAsNobody(CLIENT, [path, '{"type":"hello","version":1,"role":"agent","name":"intruder"}']);
      expect(await exitWithin(nobody, 5000)).toBe(0);
      expect(nobody.output()).toMatch(/closed/);
      expect(link.counters.refusedPeer).toBe(1);
      expect(link.snapshot().connected).toBe(false);
    } finally {
      await link.close();
      tmp.remove();
    }
  });

  it('lets the members of a configured group use the control socket, and nobody else', async () => {
    const group = 'svmtestops';
    spawnSync('groupdel', [group]);
    expect(spawnSync('groupadd', [group]).status).toBe(0);
    const gid = Number(spawnSync('getent', ['group', group]).stdout.toString().split(':')[2]);
    const tmp = tempDir('peer-grp');
    chmodSync(tmp.dir, 0o755);
    const path = join(tmp.dir, 'run', 'control.sock');
    const control = new ControlSocket({
      path, group: { gid, name: group },
      handlers: { status: () => sampleSnapshot(), checkpoint: () => ({ requested: false, epoch: 0, state: 'COMPARING' }), flows: () => [] },
    });
    try {
      await control.listen();
      const sock = statSync(path);
      expect(sock.gid).toBe(gid);
      expect(sock.mode & 0o777).toBe(0o660);
      expect(statSync(join(tmp.dir, 'run')).mode & 0o777).toBe(0o750);
      // User nobody with the group as a supplementary one: in.
      const member = watchChild(spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, `--groups=${gid}`, '--inh-caps=-all',
        process.execPath, '-e', CLIENT, '--', path, '{"cmd":"status"}'], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' }), 'group member');
      expect(await exitWithin(member, 5000)).toBe(0);
      expect(member.output()).toMatch(/\\"ok\\":true/);
      // User nobody without it: not even the socket file lets it connect.
      const outsider = spawnAsNobody(CLIENT, [path, '{"cmd":"status"}']);
      expect(await exitWithin(outsider, 5000)).toBe(0);
      expect(outsider.output()).not.toMatch(/ok/);
      expect(control.counters.refusedPeer).toBe(0);
    } finally {
      await control.close();
      tmp.remove();
      spawnSync('groupdel', [group]);
    }
  });
});
