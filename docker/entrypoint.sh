#!/bin/sh
# Container entry point: runs the shadowvm CLI with the container's arguments.
# Testable without docker: SHADOWVM_HOME points at a built tree (default: the image's).
set -eu
home=${SHADOWVM_HOME:-/opt/shadowvm}
if [ ! -f "$home/dist/lib/cli/main.js" ]; then
  echo "shadowvm: no built tree at $home (set SHADOWVM_HOME or run make build)" >&2
  exit 2
fi
if [ "$#" -eq 0 ]; then set -- --help; fi
# exec: the CLI is PID 1's replacement, so docker stop's SIGTERM reaches it directly.
exec node "$home/bin/shadowvm" "$@"
