#!/usr/bin/env bash
# `npm run fleet`: a whole fleet on this machine (Redis, S3, scheduler, dashboard, two workers),
# on loopback. Prints `export VMLB_SERVER=…` and `export VMLB_TOKEN=…` for `vmlb submit`;
# Ctrl-C stops everything. See apps/scheduler/src/dev-fleet.ts for the knobs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
for cmd in redis-server node; do
  command -v "$cmd" >/dev/null || { echo "fleet: $cmd is not installed (run npm run setup, and apt-get install redis-server)" >&2; exit 2; }
done
[ -d node_modules/tsx ] || { echo "fleet: the npm packages are missing: run npm run setup first" >&2; exit 2; }
# The workers attach disks (loop devices, FUSE, mounts): like vmlb build, they need root.
[ "$(id -u)" -eq 0 ] || echo "fleet: not root: the workers will not be able to attach disks" >&2
exec node --import tsx apps/scheduler/src/dev-fleet.ts "$@"
