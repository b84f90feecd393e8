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
  "/usr/bin/promtool:prometheus"             # `promtool check metrics` on /metrics (hostile-metrics test); the daemon is kept off
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

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
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

# An existing checkout whose node_modules predates an addon: build them once.
if [ ! -f build/Release/shadowvm_afpacket.node ] || [ ! -f build/Release/shadowvm_linkwatch.node ] || [ ! -f build/Release/shadowvm_peercred.node ]; then
  echo "install-deps: building the native addons (native/: AF_PACKET, link watch)"
  npm rebuild --foreground-scripts=false >/dev/null 2>&1 || npx --no-install node-gyp rebuild >/dev/null
fi
