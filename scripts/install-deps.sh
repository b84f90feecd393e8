#!/usr/bin/env bash
# Installs what shadowvm needs on a Debian host: Debian packages (only the
# missing ones, with apt-get) and the npm packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# binary-or-file → Debian package
need=(
  "/usr/include/pcap/pcap.h:libpcap-dev"     # native build of the libpcap port (npm cap)
  "/usr/bin/make:make"
  "/usr/bin/g++:g++"
  "/usr/bin/python3:python3"                  # node-gyp
  "/usr/sbin/ip:iproute2"
  "/usr/sbin/ethtool:ethtool"
  "/usr/bin/tcpdump:tcpdump"
  "/usr/bin/tshark:tshark"
  "/usr/bin/curl:curl"
  "/usr/bin/wget:wget"                       # downloads that must stay on the wire: its --limit-rate paces its reading (curl 7.88's overshoots)
  "/usr/sbin/nginx:nginx-light"
  "/usr/sbin/vsftpd:vsftpd"
  "/usr/bin/lftp:lftp"
  "/usr/sbin/dnsmasq:dnsmasq-base"
  "/usr/bin/dig:bind9-dnsutils"
  "/usr/bin/wrk:wrk"                         # load in the lab tests and the bench
  "/usr/bin/iperf3:iperf3"                   # the bench
  "/usr/bin/ping:iputils-ping"               # the bench
  "/usr/bin/pgrep:procps"                    # lab teardown checks
  "/usr/bin/setpriv:util-linux"              # the no-privilege checks of the port tests
  "/usr/bin/systemd-analyze:systemd"          # `systemd-analyze verify` of deploy/systemd (the units' test); nothing is started
  "/usr/bin/promtool:prometheus"             # `promtool check metrics` on /metrics (hostile-metrics test); the daemon is kept off
  "/usr/bin/chromium:chromium"               # headless: the report-chromium test loads `shadowvm report`'s HTML (about 110 MB download, 400 MB installed)
  # The QEMU lab (lib/lab/qemu): QEMU without recommends (no GUI, no ovmf);
  # seabios and ipxe-qemu come as its dependencies (BIOS, pvh.bin option ROM).
  "/usr/bin/qemu-system-x86_64:qemu-system-x86"
  "/usr/share/seabios/bios-256k.bin:seabios"
  "/var/lib/dpkg/info/busybox-static.list:busybox-static"   # the guest's sh, httpd, CGI (replaces a dynamic busybox)
  "/usr/bin/cpio:cpio"                       # the guest's initramfs
  "/usr/bin/lz4:lz4"                         # Debian's cloud kernel is LZ4-compressed (vmlinux for PVH boot)
  "/usr/bin/xz:xz-utils"                     # other Debian kernel flavours are XZ-compressed
)
missing=()
for entry in "${need[@]}"; do
  path=${entry%%:*}; pkg=${entry#*:}
  [ -e "$path" ] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "install-deps: not root and no sudo: install these packages first: ${missing[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; the default (no) is fine.
  # Packages with a daemon (prometheus: we want only its promtool) must not start one: without a
  # policy-rc.d that says so (Docker images have one), invoke-rc.d and deb-systemd-invoke would.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# install-deps.sh: no service starts while it installs packages.\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    own_policy=1
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then $sudo rm -f "$policy"; trap - EXIT; fi
  # Nor at the next boot: prometheus was installed for promtool only.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    if [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null; then
      $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi

# The QEMU lab's guest kernel: Debian's cloud kernel package, downloaded
# into the guest cache and unpacked there by the guest builder; never
# installed on the host. (The builder downloads it itself when missing.)
guest_debs="${SHADOWVM_GUEST_CACHE:-/var/cache/shadowvm/guest}/debs"
if ! ls "$guest_debs"/linux-image-*-cloud-amd64_*.deb /var/cache/apt/archives/linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1; then
  cloud_kernel() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-.*-cloud-amd64\)$/\1/p' | head -n1; }
  kpkg=$(cloud_kernel)
  if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then apt-get update -qq; kpkg=$(cloud_kernel); fi
  if [ -n "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
    echo "install-deps: downloading the QEMU lab's guest kernel $kpkg into $guest_debs"
    mkdir -p "$guest_debs"
    (cd "$guest_debs" && apt-get -o APT::Sandbox::User=root download -qq "$kpkg")
  else
    echo "install-deps: the QEMU lab's guest kernel is not cached; 'shadowvm lab up --kind qemu' (root) downloads it" >&2
  fi
fi

if [ -L node_modules ] && [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # A worktree sharing another checkout's node_modules: npm ci would empty
  # the shared directory through the link. Install in that checkout instead.
  echo "install-deps: node_modules is a link to $(readlink node_modules): not reinstalling npm packages here"
elif [ ! -L node_modules ] && { [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  echo "install-deps: installing npm packages"
  log=$(mktemp)
  if ! npm ci --no-audit --no-fund >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deps: npm ci failed. The libpcap port (npm 'cap') is built from source:" \
         "it needs the Debian packages libpcap-dev, g++, make and python3." >&2
    rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi

# An existing checkout whose node_modules predates an addon, or whose addon sources changed since
# (a pull): build them again.
stale_addons() {
  local f
  for f in build/Release/shadowvm_afpacket.node build/Release/shadowvm_linkwatch.node build/Release/shadowvm_peercred.node; do
    [ -f "$f" ] || return 0
    [ -z "$(find native binding.gyp -newer "$f" 2>/dev/null | head -n 1)" ] || return 0
  done
  return 1
}
if stale_addons; then
  echo "install-deps: building the native addons (native/: AF_PACKET, link watch)"
  npm rebuild --foreground-scripts=false >/dev/null 2>&1 || npx --no-install node-gyp rebuild >/dev/null
fi
