#!/bin/sh
# Run by node-gyp (binding.gyp) before compiling the AF_PACKET addon: says
# which Debian package is missing instead of failing deep inside make.
# $1: stamp file to write on success.
set -u
missing=""
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null 2>&1; then
  missing="$missing g++"
elif ! printf '#include <sys/socket.h>\n#include <linux/if_packet.h>\n#include <linux/virtio_net.h>\n' | "$cc" -E -x c - >/dev/null 2>&1; then
  # The C library and kernel headers (libc6-dev, linux-libc-dev) come with g++.
  missing="$missing libc6-dev linux-libc-dev"
fi
command -v make >/dev/null 2>&1 || missing="$missing make"
if [ -n "$missing" ]; then
  echo "shadowvm: cannot build the AF_PACKET addon (native/afpacket.c): missing Debian package(s):$missing." >&2
  echo "shadowvm: install them (apt-get install$missing, or scripts/install-deps.sh), then run: npm rebuild" >&2
  exit 1
fi
mkdir -p "$(dirname "$1")" && : >"$1"
