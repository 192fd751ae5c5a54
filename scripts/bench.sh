#!/usr/bin/env bash
# `npm run bench`: builds the TypeScript (the engine changes under our feet), then runs the
# benchmarks (bench/run.ts) and prints one markdown table, also written to bench/results.md.
# Needs root (loop devices, FUSE, mounts). Not part of the test suite; it asserts no times.
#   bash scripts/bench.sh [--quick] [--only NAME[,NAME...]]   (--help lists the names)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# What the benchmarks run besides the engine's own packages: Redis and Sentinel (the fleet benchmarks) and
# mkosi (the peer benchmark). setup.sh is quick when everything is there already.
VMLB_SETUP_EXTRA="${VMLB_SETUP_EXTRA:-} redis-server redis-sentinel mkosi" bash scripts/setup.sh >&2
echo "bench: building the TypeScript" >&2
npx --no-install tsc -p libs/layer-engine && npx --no-install tsc -p apps/cli
# The fleet benchmarks run the scheduler and worker processes as deployed (their dist/).
npx --no-install tsc -p libs/fleet && npx --no-install tsc -p apps/scheduler && npx --no-install tsc -p apps/worker
# apps/cli/bin/vmlb.js loads an esbuild bundle of apps/cli/dist (engine included): rebuild it
# too, or the benchmarks would time the CLI as it was at the last full build.
if [ -f apps/cli/bundle.mjs ]; then
  (cd apps/cli && node bundle.mjs)
fi
exec node --import tsx bench/run.ts "$@"
