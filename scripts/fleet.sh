#!/usr/bin/env bash
# `npm run fleet [-- --sentinel] [-- --prometheus]`: a whole fleet on this machine (Redis, S3, PostgreSQL, scheduler, dashboard, two workers),
# on loopback. Prints `export VMLB_SERVER=…` and `export VMLB_TOKEN=…` for `vmlb submit`;
# Ctrl-C stops everything; a part that dies is restarted (same port, token and state), and
# none outlives the launcher, even a killed one. See apps/scheduler/src/dev-fleet.ts for the knobs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
for cmd in redis-server node; do
  command -v "$cmd" >/dev/null || { echo "fleet: $cmd is not installed (run npm run setup, and apt-get install redis-server)" >&2; exit 2; }
done
# --sentinel (npm run fleet -- --sentinel; `npm run fleet --sentinel` arrives as npm_config_sentinel):
# a primary, two replicas and three sentinels instead of the one redis-server.
case " $* ${npm_config_sentinel:+--sentinel} " in
  *" --sentinel "*) command -v redis-sentinel >/dev/null || { echo "fleet: redis-sentinel is not installed (apt-get install redis-sentinel)" >&2; exit 2; } ;;
esac
# --prometheus: Debian's prometheus on the fleet (its config is written to the fleet's folder either way).
case " $* ${npm_config_prometheus:+--prometheus} " in
  *" --prometheus "*) command -v prometheus >/dev/null || { echo "fleet: prometheus is not installed (apt-get install prometheus)" >&2; exit 2; } ;;
esac
# Every part is started through setpriv --pdeathsig KILL, so that none outlives the launcher.
command -v setpriv >/dev/null || { echo "fleet: setpriv is not installed (apt-get install util-linux)" >&2; exit 2; }
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { echo "fleet: PostgreSQL is not installed (apt-get install postgresql): the scheduler keeps its build history there" >&2; exit 2; }
[ -d node_modules/tsx ] || { echo "fleet: the npm packages are missing: run npm run setup first" >&2; exit 2; }
# The workers attach disks (loop devices, FUSE, mounts): like vmlb build, they need root.
[ "$(id -u)" -eq 0 ] || echo "fleet: not root: the workers will not be able to attach disks" >&2
exec node --import tsx apps/scheduler/src/dev-fleet.ts "$@"
