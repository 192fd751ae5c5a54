#!/usr/bin/env bash
# `npm run test:radosgw`: the integration files that talk S3, run against Ceph's radosgw instead
# of s3rver (VMLB_TEST_S3=radosgw, test/helpers/s3-server.ts). The run starts one Ceph cluster
# (test/helpers/ceph-broker.ts: a mon and a RAM-backed osd, about 15 s) and each file a radosgw of
# its own on it; all of it is stopped and removed at the end. Sets up as scripts/test.sh does,
# then prints one closing line "vitest: N passed, N failed, N skipped".
#   scripts/test-radosgw.sh [VITEST ARGS…]   e.g. -t 'outage' to pick tests by name
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
VMLB_SETUP_EXTRA="${VMLB_SETUP_EXTRA:-} tmux redis-server redis-sentinel postgresql haproxy prometheus chromium radosgw ceph-mon ceph-osd ceph-common" bash scripts/setup.sh
mkdir -p test-results
npx --no-install tsc -p test
# The files that take their S3 server from the harness (startS3Server, the fleet services, the
# dev fleet); s3-transfer and pool-credentials run on radosgw in npm test already.
mapfile -t files < <(grep -l -E "helpers/(s3-server|fleet-services|dev-fleet)\.js" test/*.test.ts)
[ "${#files[@]}" -gt 0 ] || { echo "test-radosgw: no test file uses the S3 harness" >&2; exit 2; }
echo "test-radosgw: ${#files[@]} files on radosgw: ${files[*]}"
set +e
# An S3_ENDPOINT from the caller's shell would send the suite to that server instead.
env -u S3_ENDPOINT -u S3_ACCESS_KEY -u S3_SECRET_KEY -u S3_REGION VMLB_TEST_S3=radosgw \
  npx --no-install vitest run --project 'integration*' --reporter=default --reporter=json --outputFile.json=test-results/vitest-radosgw.json "${files[@]}" "$@"
rc=$?
set -e
node scripts/vitest-summary.mjs test-results/vitest-radosgw.json || true
exit $rc
