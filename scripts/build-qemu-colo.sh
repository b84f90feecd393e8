#!/usr/bin/env bash
# make qemu-colo: Debian's QEMU 7.2 (x86_64 system emulator only) with shadowvm's patches
# for COLO checkpoint mode (qemu-colo/patches/*.patch: two TCG fixes, and the RAM counters
# reported in COLO state), built into a local cache.
#
#   default output: /var/cache/shadowvm/qemu-colo/<debian version>-<hash>/bin/qemu-system-x86_64
#   SHADOWVM_QEMU_COLO_DIR=DIR      install there instead
#   SHADOWVM_QEMU_COLO_CACHE=DIR    cache root (work tree, ccache, logs); default /var/cache/shadowvm/qemu-colo
#   SHADOWVM_QEMU_SRC_VERSION=V     Debian source version (default: the qemu-system-x86 candidate's source)
#   SHADOWVM_QEMU_COLO_JOBS=N       parallel compile jobs (default 2, never more than the cores)
#   SHADOWVM_QEMU_COLO_PATCHES=DIR  take the patches from DIR (e.g. a subset, to check what each fixes)
#
# <hash> covers the patches, the configure flags and the source version, so a changed
# patch builds into a new directory. A second run with the output present does nothing.
# Needs root (apt-get). The build runs under `nice -n 19`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATCH_DIR="${SHADOWVM_QEMU_COLO_PATCHES:-$ROOT/qemu-colo/patches}"
CACHE_ROOT="${SHADOWVM_QEMU_COLO_CACHE:-/var/cache/shadowvm/qemu-colo}"
JOBS="${SHADOWVM_QEMU_COLO_JOBS:-2}"
CORES="$(nproc)"
[ "$JOBS" -gt "$CORES" ] && JOBS="$CORES"
APT=(apt-get -o DPkg::Lock::Timeout=900 -q)

# Firmware comes from Debian's packages (seabios, ipxe-qemu, qemu-system-data); the prefix
# is only nominal: the binary is copied out of the build tree, and QEMU looks for its
# firmware in the absolute --firmwarepath directories.
CONFIGURE_FLAGS=(
  --target-list=x86_64-softmmu
  --prefix=/usr/local
  --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
  --with-pkgversion=shadowvm-colo
  --without-default-features
  --enable-tcg --enable-kvm --enable-replication --enable-fdt=system
  --disable-docs --disable-tools --disable-guest-agent --disable-user
  --disable-install-blobs --disable-werror
)
BUILD_DEPS=(dpkg-dev xz-utils patch gcc make ninja-build meson pkg-config python3
            flex bison libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev ccache)
RUNTIME_DEPS=(qemu-system-x86 qemu-system-data seabios ipxe-qemu)

say() { echo "qemu-colo: $*"; }
die() { echo "qemu-colo: ERROR: $*" >&2; exit 1; }

missing_packages() {
  local p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || echo "$p"
  done
}

[ -d "$PATCH_DIR" ] || die "no patch directory $PATCH_DIR"
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob

# The Debian source version: the binary candidate's, less a binNMU suffix (+bN).
src_version() {
  if [ -n "${SHADOWVM_QEMU_SRC_VERSION:-}" ]; then echo "$SHADOWVM_QEMU_SRC_VERSION"; return; fi
  local v
  v="$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)"
  [ -n "$v" ] || v="$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')"
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "cannot tell which qemu version Debian ships (apt-cache policy qemu-system-x86)"
  echo "${v%+b[0-9]*}"
}
SRC_VERSION="$(src_version)"
UPSTREAM_VERSION="${SRC_VERSION#*:}"                        # 7.2+dfsg-7+deb12u18
HASH="$( { echo "$SRC_VERSION"; printf '%s\n' "${CONFIGURE_FLAGS[@]}";
           for p in "${PATCHES[@]}"; do basename "$p"; cat "$p"; done; } | sha256sum | cut -c1-12)"
OUT="${SHADOWVM_QEMU_COLO_DIR:-$CACHE_ROOT/$UPSTREAM_VERSION-$HASH}"

if [ -x "$OUT/bin/qemu-system-x86_64" ] && [ -f "$OUT/BUILD-INFO" ]; then
  say "already built, nothing to do: $OUT/bin/qemu-system-x86_64"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get for build dependencies and the source): sudo make qemu-colo"
[ "${#PATCHES[@]}" -gt 0 ] || die "no patches in $PATCH_DIR"

mkdir -p "$CACHE_ROOT"
# One build at a time: they share the work tree.
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
  say "another build is running (lock $CACHE_ROOT/.lock); waiting for it"
  flock 9
fi
if [ -x "$OUT/bin/qemu-system-x86_64" ] && [ -f "$OUT/BUILD-INFO" ]; then
  say "built meanwhile by the other run, nothing to do: $OUT/bin/qemu-system-x86_64"
  exit 0
fi
LOG="$CACHE_ROOT/build-$UPSTREAM_VERSION-$HASH.log"
: >"$LOG"
STEP=""
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "----- last lines of $LOG -----" >&2
    tail -n 40 "$LOG" >&2 || true
    echo "-----" >&2
    echo "qemu-colo: FAILED during: ${STEP:-setup} (exit $rc). Full log: $LOG" >&2
  fi
}
trap on_exit EXIT
step() { STEP="$*"; say "$*"; echo "=== $(date -u +%FT%TZ) $*" >>"$LOG"; }
T0=$(date +%s)

# 1. deb-src for the same suites as the deb lines (a separate deb822 file; idempotent).
step "apt sources: deb-src for bookworm"
SRC_LIST=/etc/apt/sources.list.d/shadowvm-deb-src.sources
has_source() {  # not `apt-cache | grep -q`: with pipefail, grep's early exit fails the pipe
  local versions
  versions="$(apt-cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p')"
  grep -qxF "$SRC_VERSION" <<<"$versions"
}
if ! has_source; then
  if [ ! -f "$SRC_LIST" ]; then
    cat >"$SRC_LIST" <<'EOF'
# Added by shadowvm scripts/build-qemu-colo.sh (apt-get source qemu).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  "${APT[@]}" update >>"$LOG" 2>&1
  has_source || die "source qemu=$SRC_VERSION is not available from the configured deb-src lines"
fi

# 2. Build dependencies (a minimal explicit list, not build-dep) and the firmware packages.
step "packages: build dependencies and firmware"
mapfile -t NEED < <(missing_packages "${BUILD_DEPS[@]}" "${RUNTIME_DEPS[@]}")
if [ "${#NEED[@]}" -gt 0 ]; then
  say "installing: ${NEED[*]}"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${NEED[@]}" >>"$LOG" 2>&1
fi

# 3. Debian's source with Debian's patches (dpkg-source applies them), then ours.
# The work tree's path does not depend on the patches, so ccache reuses objects across builds.
WORK="$CACHE_ROOT/work"
SRC="$WORK/qemu-$UPSTREAM_VERSION"
step "source: qemu $SRC_VERSION"
mkdir -p "$WORK/download"
DSC="$WORK/download/qemu_${UPSTREAM_VERSION}.dsc"
if [ ! -f "$DSC" ]; then
  (cd "$WORK/download" && "${APT[@]}" source --download-only "qemu=$SRC_VERSION") >>"$LOG" 2>&1
fi
rm -rf "$SRC"
dpkg-source -x "$DSC" "$SRC" >>"$LOG" 2>&1
step "patches: ${#PATCHES[@]} from $PATCH_DIR"
for p in "${PATCHES[@]}"; do
  echo "--- applying $(basename "$p")" >>"$LOG"
  patch -d "$SRC" -p1 --forward --batch <"$p" >>"$LOG" 2>&1 || die "patch $(basename "$p") does not apply to qemu $SRC_VERSION"
done

# 4. Configure and build.
if [ -d /usr/lib/ccache ]; then
  export PATH="/usr/lib/ccache:$PATH" CCACHE_DIR="$CACHE_ROOT/ccache"
fi
step "configure: ${CONFIGURE_FLAGS[*]}"
mkdir -p "$SRC/build"
(cd "$SRC/build" && nice -n 19 ../configure "${CONFIGURE_FLAGS[@]}") >>"$LOG" 2>&1
step "build: nice -n 19 ninja -j$JOBS qemu-system-x86_64 (11-13 min on 2 cores; less with ccache warm)"
(cd "$SRC/build" && nice -n 19 ninja -j"$JOBS" qemu-system-x86_64) >>"$LOG" 2>&1

# 5. Install: the binary, plus share/qemu pointing at the system's firmware directory (the
# relocated data dir QEMU also searches). Staged, then renamed, so a half-built OUT never exists.
step "install: $OUT"
STAGE="$OUT.tmp.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/share"
install -m 0755 "$SRC/build/qemu-system-x86_64" "$STAGE/bin/qemu-system-x86_64"
ln -s /usr/share/qemu "$STAGE/share/qemu"
cp -r "$PATCH_DIR" "$STAGE/patches"

step "check: version and a TCG boot into SeaBIOS"
"$STAGE/bin/qemu-system-x86_64" --version >>"$LOG" 2>&1
rc=0
timeout 3 "$STAGE/bin/qemu-system-x86_64" -machine pc -accel tcg -m 64 -display none -nodefaults \
  -serial none -monitor none -no-user-config >>"$LOG" 2>&1 || rc=$?
[ "$rc" -eq 124 ] || die "the built binary did not keep running (exit $rc): firmware missing?"

T1=$(date +%s)
{
  echo "qemu-source: $SRC_VERSION"
  echo "hash: $HASH"
  echo "patches: $(for p in "${PATCHES[@]}"; do basename "$p"; done | tr '\n' ' ')"
  echo "configure: ${CONFIGURE_FLAGS[*]}"
  echo "built: $(date -u +%FT%TZ) in $((T1 - T0)) s with -j$JOBS"
  echo "version: $("$STAGE/bin/qemu-system-x86_64" --version | head -n1)"
} >"$STAGE/BUILD-INFO"
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$STAGE" "$OUT"
cp "$LOG" "$OUT/build.log"
STEP=""
say "built in $((T1 - T0)) s: $OUT/bin/qemu-system-x86_64"
