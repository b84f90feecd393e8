#!/usr/bin/env bash
# Records the replay fixtures (fixtures/<name>/) in the netns lab; see fixtures/README.md.
#   sudo scripts/record-fixtures.sh                  # every scenario
#   sudo scripts/record-fixtures.sh http-keepalive   # one (or several) by name
#   sudo scripts/record-fixtures.sh --list
# Options after the script name go to dist/scripts/record-fixtures.js (--out DIR, --prefix P, --attempts N).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "record-fixtures: needs root (network namespaces, veth pairs, tcpdump); run it with sudo" >&2
  exit 1
fi
node -e "require('cap')" 2>/dev/null || {
  echo "record-fixtures: the cap native module does not load; run npm install (its install script builds it against libpcap-dev)" >&2
  exit 1
}
npx tsc -p scripts/tsconfig.record.json
exec node dist/scripts/record-fixtures.js "$@"
