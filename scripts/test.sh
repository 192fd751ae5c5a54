#!/usr/bin/env bash
# The README's second command, and what .ci/run calls: set up, then run every test (unit and
# integration: real qemu-img chains, loop devices, mounts and chroots), then print one
# closing line "N passed, N failed, N skipped".
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
VMLB_SETUP_EXTRA="${VMLB_SETUP_EXTRA:-} tmux redis-server redis-sentinel postgresql haproxy prometheus chromium radosgw ceph-mon ceph-osd ceph-common docker-compose" bash scripts/setup.sh
mkdir -p test-results
npx --no-install tsc -p libs/layer-engine --noEmit
npx --no-install tsc -p apps/cli --noEmit
npx --no-install tsc -p libs/fleet --noEmit
npx --no-install tsc -p apps/scheduler --noEmit
npx --no-install tsc -p apps/worker --noEmit
npx --no-install tsc -p apps/web-dashboard --noEmit
npx --no-install tsc -p apps/web-dashboard/tsconfig.ui.json
npx --no-install tsc -p bench
npx --no-install tsc -p test
set +e
npx --no-install vitest run --reporter=default --reporter=json --outputFile.json=test-results/vitest.json "$@"
rc=$?
set -e
node scripts/vitest-summary.mjs test-results/vitest.json || true
exit $rc
