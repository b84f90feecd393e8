import { join } from 'node:path';
import { ControlHandlers, ControlSocket, parseControlRequest, queryControlSocket } from '../../../lib/control/control-socket';
import { tempDir } from '../agents/socket-helpers';
import { sampleSnapshot } from './sample-snapshot';

describe('the failover control command', () => {
  it('parses {"cmd":"failover"} and names it among the commands', () => {
    expect(parseControlRequest('{"cmd":"failover","id":7}')).toEqual({ cmd: 'failover', id: 7 });
    expect(() => parseControlRequest('{"cmd":"promote"}')).toThrow(/one of status, checkpoint, failover, flows/);
  });

  it('answers with the handler\'s result, and with an error when the bridge takes no failover requests', async () => {
    const tmp = tempDir('ctl-fo');
    const base: ControlHandlers = { status: () => sampleSnapshot(), checkpoint: () => ({ requested: false, epoch: 0, state: 'COMPARING' }), flows: () => [] };
    const withFailover = new ControlSocket({
      path: join(tmp.dir, 'a', 'control.sock'),
      handlers: { ...base, failover: () => ({ promoted: true, survivor: 'tap-b', roles: [{ port: 'tap-a', role: 'dead' }, { port: 'tap-b', role: 'promoted' }] }) },
    });
    const without = new ControlSocket({ path: join(tmp.dir, 'b', 'control.sock'), handlers: base });
    try {
      await withFailover.listen();
      await without.listen();
      const yes = await queryControlSocket(join(tmp.dir, 'a', 'control.sock'), { cmd: 'failover' });
      expect(yes).toEqual({ ok: true, failover: expect.objectContaining({ promoted: true, survivor: 'tap-b' }) });
      const no = await queryControlSocket(join(tmp.dir, 'b', 'control.sock'), { cmd: 'failover' });
      expect(no).toEqual({ ok: false, error: 'this bridge does not take failover requests' });
    } finally {
      await withFailover.close();
      await without.close();
      tmp.remove();
    }
  });
});
