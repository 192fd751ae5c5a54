#!/usr/bin/env bash
# `npm run test:nbd`: the nbd backend, run for real inside a Debian VM whose cloud kernel has
# the nbd module (this host's kernel may have none): see test/nbd-vm/run.ts. Sets up like the
# test command, then builds the test-host image with vmlb (cached in /var/tmp/vmlb-nbd-vm),
# boots it, and prints the guest's steps, its test results and the nbd-vs-fuse benchmark.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
VMLB_SETUP_EXTRA="${VMLB_SETUP_EXTRA:-} redis-server" bash scripts/setup.sh
exec node --import tsx test/nbd-vm/run.ts "$@"
