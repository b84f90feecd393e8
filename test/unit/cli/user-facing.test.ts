import { UserFacingError } from '../../../lib/errors';
import { UsageError } from '../../../lib/cli/errors';
import { ConfigError } from '../../../lib/pipeline/config';
import { PcapFormatError, UnsupportedLinkTypeError } from '../../../lib/io/pcap-reader';
import { PcapWriteError, PcapWriter } from '../../../lib/io/pcap-writer';
import { AfPacketAddonNotBuiltError } from '../../../lib/io/afpacket-native';
import { AfPacketNoSuchInterfaceError, AfPacketPermissionError } from '../../../lib/io/afpacket-port';
import { LinkWatchAddonNotBuiltError } from '../../../lib/io/link-watch';
import { SocketInUseError, SocketPathError } from '../../../lib/control/unix-socket';
import { MetricsBindError } from '../../../lib/control/metrics';
import { ControlSocketError } from '../../../lib/control/control-socket';
import { SetupConfigError, SetupPermissionError, SetupStepError } from '../../../lib/setup';
import { TeardownIncompleteError } from '../../../lib/setup/apply';
import { LabCommandError } from '../../../lib/lab/exec';
import { LabConfigError } from '../../../lib/lab/netns';
import { QemuLaunchError } from '../../../lib/qemu/process';
import { PortShardError } from '../../../lib/cli/ports';

describe('UserFacingError', () => {
  it.each<[string, Error]>([
    ['UsageError', new UsageError('x')],
    ['ConfigError', new ConfigError('maxFlows', 'must be an integer > 0, got 0')],
    ['PcapFormatError', new PcapFormatError('c.pcap', 0, 'bad magic')],
    ['UnsupportedLinkTypeError', new UnsupportedLinkTypeError('c.pcap', 0, 113)],
    ['PcapWriteError', new PcapWriteError('o.pcap', 'cannot create it')],
    // The error the old list spelt AfPacketAddonError: a missing addon printed a stack and exited 1.
    ['AfPacketAddonNotBuiltError', new AfPacketAddonNotBuiltError(['/x/build/Release/shadowvm_afpacket.node'], new Error('no such file'))],
    ['AfPacketNoSuchInterfaceError', new AfPacketNoSuchInterfaceError('eth9', 'ENODEV', 'No such device', 'ioctl')],
    ['AfPacketPermissionError', new AfPacketPermissionError('eth0', 'EPERM', 'Operation not permitted', 'socket')],
    ['LinkWatchAddonNotBuiltError', new LinkWatchAddonNotBuiltError([], new Error('no such file'))],
    ['SocketInUseError', new SocketInUseError('/run/x.sock', 'control socket')],
    ['SocketPathError', new SocketPathError('/run/x.sock', 'control socket', 'bad owner')],
    ['MetricsBindError', new MetricsBindError('10.0.0.1')],
    ['ControlSocketError', new ControlSocketError('/run/x.sock', 'no bridge')],
    ['SetupConfigError', new SetupConfigError('invalid-name', 'x')],
    ['SetupPermissionError', new SetupPermissionError()],
    ['SetupStepError', new SetupStepError(['ip', 'link'], 'failed', 0, [])],
    ['TeardownIncompleteError', new TeardownIncompleteError([], [])],
    ['LabCommandError', new LabCommandError(['ip', 'netns'], 1, 'RTNETLINK answers: File exists')],
    ['LabConfigError', new LabConfigError('x')],
    ['QemuLaunchError', new QemuLaunchError('primary', 'x')],
    ['PortShardError', new PortShardError('eth0', 'cap', { count: 2, index: 1 })],
  ])('%s is one, and keeps its own name', (name, err) => {
    expect(err).toBeInstanceOf(UserFacingError);
    expect(err.name).toBe(name);
  });

  it('PcapWriter refuses a path in a missing folder with a PcapWriteError naming the folder', () => {
    expect(() => new PcapWriter('/nonexistent-folder/out.pcap')).toThrow(new PcapWriteError('/nonexistent-folder/out.pcap', 'cannot create it: the folder /nonexistent-folder does not exist'));
  });
});
