/**
 * The text files of the QEMU lab's guest: /init, the CGI scripts and the
 * vsftpd configuration. Kept apart from the builder so the cache key can
 * hash them and a reader sees the whole guest in one place.
 *
 * The guest reads its addresses from the kernel command line (`svm.*=`), so
 * one image serves every lab; nothing in it depends on the MAC or on chance.
 */

/** Printed on the serial console once httpd and vsftpd listen. */
export const GUEST_READY_MARKER = 'SHADOWVM-GUEST-READY';
/** Printed by /init when booted with `svm.probe=1`, which then powers off at once. */
export const GUEST_PROBE_MARKER = 'SHADOWVM-GUEST-PROBE';
export const GUEST_HOSTNAME = 'shadowvm-guest';
/**
 * vsftpd's default passive ports in the guest: a fixed, narrow range. vsftpd
 * picks a port at random, so the replicas' `227` replies differ (the
 * thesis's FTP case); `svm.pasv=N-N` on the command line makes them agree.
 */
export const GUEST_FTP_PASV_PORTS = { min: 30000, max: 30009 } as const;
/** Where the HTTP document root and the anonymous FTP root live in the guest. */
export const GUEST_WWW = '/www';

/**
 * Virtio modules in dependency order (Debian builds them as modules; this
 * order is what modules.dep gives, measured in MACHINE-NOTES "QEMU").
 */
export const GUEST_MODULES = [
  'kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
  'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
  'kernel/drivers/virtio/virtio_pci.ko',
  'kernel/net/core/failover.ko',
  'kernel/drivers/net/net_failover.ko',
  'kernel/drivers/net/virtio_net.ko',
] as const;

export function initScript(): string {
  const mods = GUEST_MODULES.map((m) => m.split('/').pop()?.replace(/\.ko$/, '')).join(' ');
  return `#!/bin/sh
# shadowvm QEMU lab guest: one static address, httpd with CGI, vsftpd.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /var/lib/svm/session /var/empty-vsftpd
mount -t devpts devpts /dev/pts
hostname ${GUEST_HOSTNAME}
# The accelerator probe (lib/qemu/accel.ts): reaching user space is the proof.
case " $(cat /proc/cmdline) " in
  *" svm.probe=1 "*) echo "${GUEST_PROBE_MARKER}" > /dev/ttyS0; poweroff -f ;;
esac

svm_ip4=10.77.0.2/24
svm_peer4=10.77.0.1
svm_peermac=02:77:00:00:00:01
svm_pasv=${GUEST_FTP_PASV_PORTS.min}-${GUEST_FTP_PASV_PORTS.max}
svm_ip6=
for word in $(cat /proc/cmdline); do
  case "$word" in
    svm.ip4=*) svm_ip4=\${word#*=} ;;
    svm.peer4=*) svm_peer4=\${word#*=} ;;
    svm.peermac=*) svm_peermac=\${word#*=} ;;
    svm.pasv=*) svm_pasv=\${word#*=} ;;
    svm.ip6=*) svm_ip6=\${word#*=} ;;
  esac
done

for m in ${mods}; do
  insmod /lib/modules/$m.ko || echo "svm: insmod $m failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 500 ]; do usleep 10000; n=$((n+1)); done

# Every IPv4 neighbour static: once up, the guest says nothing unasked.
# IPv6 only when svm.ip6 is given: no RS, no RA, no DAD, no link-local
# address (busybox cannot add a static IPv6 neighbour: the guest asks by ND).
for scope in all default eth0 lo; do
  for kv in router_solicitations=0 accept_ra=0 accept_dad=0 dad_transmits=0 addr_gen_mode=1; do
    echo \${kv#*=} > /proc/sys/net/ipv6/conf/$scope/\${kv%%=*} 2>/dev/null
  done
  [ -n "$svm_ip6" ] || echo 1 > /proc/sys/net/ipv6/conf/$scope/disable_ipv6 2>/dev/null
done
ip link set lo up
ip addr add "$svm_ip4" dev eth0
if [ -n "$svm_ip6" ]; then
  # MLD reports go out (and repeat) within a millisecond of link-up, before
  # the clone, instead of at random times later; a learnt neighbour stays
  # reachable for an hour instead of being re-probed every 30 s.
  echo 1 > /proc/sys/net/ipv6/conf/eth0/mldv1_unsolicited_report_interval
  echo 1 > /proc/sys/net/ipv6/conf/eth0/mldv2_unsolicited_report_interval
  echo 3600000 > /proc/sys/net/ipv6/neigh/eth0/base_reachable_time_ms
  ip -6 addr add "$svm_ip6" dev eth0
fi
ip link set eth0 up
arp -i eth0 -s "$svm_peer4" "$svm_peermac"

sed -i "s/^pasv_min_port=.*/pasv_min_port=\${svm_pasv%-*}/; s/^pasv_max_port=.*/pasv_max_port=\${svm_pasv#*-}/" /etc/vsftpd.conf
httpd -f -p 80 -h ${GUEST_WWW} &
vsftpd /etc/vsftpd.conf &
n=0
while [ $n -lt 500 ]; do
  if netstat -ltn 2>/dev/null | grep -q ':21 ' && netstat -ltn 2>/dev/null | grep -q ':80 '; then break; fi
  usleep 10000; n=$((n+1))
done
echo "${GUEST_READY_MARKER} $(uname -r) $(hostname)" > /dev/ttyS0
# A shell on the serial console: lets a test change one replica's state
# (QemuProcess.consoleCommand). No echo, no CR: the reader sees only output.
stty -F /dev/ttyS0 -echo -onlcr 2>/dev/null
( while :; do sh </dev/ttyS0 >/dev/ttyS0 2>&1; sleep 1; done ) &
while :; do sleep 3600 & wait $!; done
`;
}

/** GET /cgi-bin/counter: increments a counter kept in guest memory (the initramfs is tmpfs) and returns it. */
export function counterCgi(): string {
  return `#!/bin/sh
# A mkdir lock: busybox has no flock, and two requests must not read the same value.
while ! mkdir /var/lib/svm/counter.lock 2>/dev/null; do usleep 1000; done
n=$(cat /var/lib/svm/counter 2>/dev/null || echo 0)
n=$((n+1))
echo $n > /var/lib/svm/counter
rmdir /var/lib/svm/counter.lock
printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' "$n"
`;
}

/**
 * /cgi-bin/session?k=v stores v under k, /cgi-bin/session?k returns it;
 * without a query it lists every key. Keys and values are [A-Za-z0-9_-].
 */
export function sessionCgi(): string {
  return `#!/bin/sh
dir=/var/lib/svm/session
printf 'Content-Type: text/plain\\r\\n\\r\\n'
q="$QUERY_STRING"
case "$q" in
  *[!A-Za-z0-9_=-]*) echo "bad query"; exit 0 ;;
esac
if [ -z "$q" ]; then
  for f in $(ls $dir | sort); do echo "$f=$(cat $dir/$f)"; done
  exit 0
fi
k=\${q%%=*}
if [ "$k" != "$q" ]; then
  echo "\${q#*=}" > $dir/$k
fi
if [ -f $dir/$k ]; then echo "$k=$(cat $dir/$k)"; else echo "$k="; fi
`;
}

export function vsftpdConfig(): string {
  return `# shadowvm QEMU lab guest: anonymous, read-only, passive on a fixed range
listen=YES
listen_ipv6=NO
listen_port=21
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_upload_enable=NO
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
no_anon_password=YES
anon_root=${GUEST_WWW}
hide_ids=YES
pasv_enable=YES
pasv_min_port=${GUEST_FTP_PASV_PORTS.min}
pasv_max_port=${GUEST_FTP_PASV_PORTS.max}
port_enable=YES
connect_from_port_20=NO
dirmessage_enable=NO
ftpd_banner=shadowvm lab FTP
use_localtime=NO
xferlog_enable=NO
secure_chroot_dir=/var/empty-vsftpd
nopriv_user=nobody
ftp_username=ftp
isolate=NO
isolate_network=NO
seccomp_sandbox=NO
tcp_wrappers=NO
`;
}

export const GUEST_ETC: Readonly<Record<string, string>> = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nftp:x:100:101:ftp:/www:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  'etc/group': 'root:x:0:\nftp:x:101:\nnogroup:x:65534:\n',
  'etc/nsswitch.conf': 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n',
  'etc/hosts': `127.0.0.1 localhost ${GUEST_HOSTNAME}\n`,
  'etc/vsftpd.conf': vsftpdConfig(),
};
