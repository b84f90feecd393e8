#!/usr/bin/env bash
# Boots a private systemd (PID 1 of its own PID namespace) that can see only
# the units it is given, for the units' test (test/integration/systemd-start.test.ts).
#
#   systemd-sandbox.sh UNITDIR STATEDIR NETNS
#
# Inside a new mount namespace, before systemd starts: /tmp, /var/tmp, /run,
# /var/lib, /var/cache, /var/log and the unit folders are fresh (tmpfs or
# UNITDIR), so nothing it or a unit writes there reaches the host's files; the
# only units are UNITDIR's and a few empty targets, so nothing else starts.
# /opt/shadowvm and /etc/shadowvm are bound from STATEDIR. The network is the
# named namespace NETNS. Runs until killed (SIGKILL of its PID 1 ends the
# whole PID namespace). /etc/shadowvm must exist (as a mount point).
#
# Why so closed: a systemd booted on the host's file system runs
# systemd-tmpfiles at boot, which empties the shared /tmp, and starts every
# enabled service (nginx, postgresql…) in the host's network namespace.
set -euo pipefail
units=$1 state=$2 netns=$3
exec ip netns exec "$netns" unshare --pid --fork --mount --mount-proc --uts --propagation private bash -c '
  set -euo pipefail
  units=$1 state=$2
  # /run first: mount(8) keeps its notes there (/run/mount).
  mount -n -t tmpfs -o mode=0755 tmpfs /run
  # Then UNITDIR and STATEDIR, which may live under /tmp, replaced next.
  mount -n --bind "$units" /etc/systemd/system
  mount -n -t tmpfs tmpfs /opt && mkdir /opt/shadowvm && mount -n --bind "$state/opt/shadowvm" /opt/shadowvm
  mount -n --bind "$state/etc/shadowvm" /etc/shadowvm
  for d in /tmp /var/tmp; do mount -n -t tmpfs -o mode=1777 tmpfs "$d"; done
  # StateDirectory=, CacheDirectory=, journald and the state of systemd itself: private too.
  for d in /var/lib /var/cache /var/log; do mount -n -t tmpfs tmpfs "$d"; done
  # The only unit folder systemd reads is UNITDIR: the others (and the generators) are hidden.
  empty=$(mktemp -d /run/empty.XXXX)
  for d in /usr/lib/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system-generators /etc/systemd/system-generators; do
    if [ -d "$d" ]; then mount -n --bind "$empty" "$d"; fi
  done
  hostname op-systemd
  exec /lib/systemd/systemd --system --unit=op-sandbox.target --log-target=console --show-status=no
' sandbox "$units" "$state"
