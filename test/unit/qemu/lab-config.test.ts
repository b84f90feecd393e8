/** The QEMU lab's pure pieces: the guest's kernel command line, the lab's pipeline timing, QEMU's arguments. */
import { guestCmdline } from '../../../lib/lab/qemu/guest';
import { TCG_FAILOVER_SILENCE_MS, TCG_MAX_UNMATCHED_AGE_MS, qemuLabConfig } from '../../../lib/lab/qemu/pair';
import { makePipelineConfig } from '../../../lib/pipeline/config';
import { qemuArgs } from '../../../lib/qemu/process';

const net = { ipv4: '10.77.0.2', prefixLength: 24, peerIpv4: '10.77.0.1', peerMac: '02:77:00:00:00:01' };

describe('QEMU lab settings', () => {
  test('the guest command line carries the addresses and nothing left to chance', () => {
    const line = guestCmdline({ ...net, ftpPassivePorts: { min: 30005, max: 30005 } });
    expect(line).toContain('svm.ip4=10.77.0.2/24');
    expect(line).toContain('svm.peermac=02:77:00:00:00:01');
    expect(line).toContain('svm.pasv=30005-30005');
    expect(line).toContain('nokaslr');
    expect(line).not.toContain('svm.ip6');
    expect(guestCmdline({ ...net, ipv6: 'fd77::2/64' })).toContain('svm.ip6=fd77::2/64');
  });

  test('under TCG the lab waits longer before calling a slow replica late or a slow primary dead', () => {
    const tcg = makePipelineConfig(qemuLabConfig('tcg'));
    expect(tcg.resync).toBe('copy');
    expect(tcg.maxUnmatchedAgeMs).toBe(TCG_MAX_UNMATCHED_AGE_MS);
    expect(tcg.failover.silenceMs).toBe(TCG_FAILOVER_SILENCE_MS);
    const kvm = makePipelineConfig(qemuLabConfig('kvm'));
    expect(kvm.maxUnmatchedAgeMs).toBe(makePipelineConfig().maxUnmatchedAgeMs);
    expect(kvm.failover).toEqual(makePipelineConfig().failover);
  });

  test('a caller\'s partial failover settings keep the TCG values they do not name', () => {
    const c = makePipelineConfig(qemuLabConfig('tcg', { failover: { carrierHoldMs: 50 } as never, maxUnmatchedAgeMs: 300 }));
    expect(c.failover.carrierHoldMs).toBe(50);
    expect(c.failover.silenceMs).toBe(TCG_FAILOVER_SILENCE_MS);
    expect(c.maxUnmatchedAgeMs).toBe(300);
  });

  test('QEMU gets a tap without offloads or vhost, two QMP sockets, a console socket and -incoming defer when asked', () => {
    const args = qemuArgs({
      name: 'qx-vm1', runDir: '/run/x', memMiB: 512, accel: 'tcg', tap: 'qxp', mac: '02:77:00:00:00:02', incoming: true,
      boot: { kernel: '/k', initrd: '/i', cmdline: 'c' },
    }).join(' ');
    expect(args).toContain('-m 512');
    expect(args).toContain('-cpu max');
    expect(args).toContain('tap,id=net0,ifname=qxp,script=no,downscript=no,vhost=off,vnet_hdr=off');
    expect(args).toContain('mac=02:77:00:00:00:02');
    expect(args).toContain('unix:/run/x/qx-vm1.qmp,server=on,wait=off');
    expect(args).toContain('unix:/run/x/qx-vm1.agent.qmp,server=on,wait=off');
    expect(args).toContain('path=/run/x/qx-vm1.console');
    expect(args).toContain('-incoming defer');
  });
});
