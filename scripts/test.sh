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
# Two lanes side by side (vitest.config.ts): the unit tests and the engine's files here, the
# fleet's files in a second vitest process whose output is shown when both are done (it is in
# test-results/vitest-fleet.log meanwhile). Arguments (files, -t NAME) go to both.
set +e
fleet_log=test-results/vitest-fleet.log
echo "npm test: the fleet's test files run beside these; their output: $fleet_log (shown at the end)"
node_modules/.bin/vitest run --project integration-fleet --passWithNoTests --reporter=default --reporter=json --outputFile.json=test-results/vitest-fleet.json "$@" >"$fleet_log" 2>&1 &
fleet_pid=$!
# Ctrl-C or a kill of this script stops the other lane too (a background job ignores SIGINT).
trap 'kill -TERM "$fleet_pid" 2>/dev/null' INT TERM
npx --no-install vitest run --project unit --project integration --passWithNoTests --reporter=default --reporter=json --outputFile.json=test-results/vitest.json "$@"
rc=$?
wait "$fleet_pid"
fleet_rc=$?
trap - INT TERM
echo
echo "---- the fleet's lane ($fleet_log) ----"
cat "$fleet_log"
[ "$rc" -ne 0 ] || rc=$fleet_rc
set -e
node scripts/vitest-summary.mjs test-results/vitest.json test-results/vitest-fleet.json || true
exit $rc
