#!/bin/bash
# Runs inside the nbd test VM as its one job (vmlb-nbd-check.service of the test-host image,
# test/nbd-vm/host-image), with this repository mounted at /repo: loads the nbd module, runs
# the nbd backend's tests, the in-VM tests (guest.vmtest.ts: examples/hello and a base-image
# project with --backend nbd, a fleet worker with nbd slots) and the benchmark
# backend-overhead (nbd vs fuse). Writes /repo/.nbd-vm-results/ (steps.tsv, each step's log,
# vitest JSON, bench.md) for
# run.ts to read after power-off, and says each step on the console as "vmlb-nbd: ...".
set -u
cd /repo
out=/repo/.nbd-vm-results
rm -rf "$out" /repo/.nbd-vm-tmp
mkdir -p "$out" /repo/.nbd-vm-tmp
# Temp dirs (test sandboxes, stores) on the repository disk, which has the room.
export TMPDIR=/repo/.nbd-vm-tmp CI=1 NO_COLOR=1 FORCE_COLOR=0
say() { echo "vmlb-nbd: $*"; }

step() {
  local name=$1; shift
  say "step $name: $*"
  local t0; t0=$(date +%s.%N)
  # Each line on the console as it comes (the host shows them), and whole in the step's log.
  timeout --kill-after=30 "${VMLB_NBD_STEP_TIMEOUT:-1800}" "$@" 2>&1 | tee "$out/$name.log" | sed -u "s/^/vmlb-nbd: [$name] /"
  local rc=${PIPESTATUS[0]}
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$out/steps.tsv"
  say "step $name: exit $rc ($secs s)"
  return 0
}

# Every 3 minutes, what runs (and what it waits in), for a step that seems stuck.
( while sleep 180; do
    ps -eo pid,etimes,stat,wchan:24,args --sort=start_time | grep -v '\[' | tail -n 25 | cut -c1-200 | sed 's/^/vmlb-nbd: [ps] /'
  done ) &
watcher=$!
say "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB, node $(node --version)"
step modprobe bash -c 'modprobe nbd max_part=16 && modprobe fuse 2>/dev/null; modprobe loop 2>/dev/null; test -b /dev/nbd0 && echo "max_part=$(cat /sys/module/nbd/parameters/max_part), $(ls /sys/block | grep -c "^nbd") devices"'
# A development run (VMLB_NBD_VM_ONLY on the host, see run.ts): only the guest tests whose names match.
only=$(cat /repo/.nbd-vm-only 2>/dev/null || true)
if [ -n "$only" ]; then
  step guest-tests node node_modules/vitest/vitest.mjs run --config test/nbd-vm/vitest.config.ts -t "$only" \
    --reporter=verbose --reporter=json --outputFile.json="$out/guest.json"
  step leftovers bash -c 'c=0; for p in /sys/block/nbd*/pid; do [ -e "$p" ] && { echo "connected: $p"; c=1; }; done; losetup -a; pgrep -a "qemu-nbd|qemu-storage" && c=1; exit $c'
  kill "$watcher" 2>/dev/null
  rm -rf /repo/.nbd-vm-tmp
  sync
  say "done"
  exit 0
fi
step attach-tests node node_modules/vitest/vitest.mjs run --project integration test/attach.test.ts \
  --reporter=verbose --reporter=json --outputFile.json="$out/attach.json"
step guest-tests node node_modules/vitest/vitest.mjs run --config test/nbd-vm/vitest.config.ts \
  --reporter=verbose --reporter=json --outputFile.json="$out/guest.json"
step bench bash -c 'VMLB_BENCH_TMP=$TMPDIR node --import tsx bench/run.ts --only backend-overhead && cp bench/results.md '"$out"'/bench.md'
# What the engine could have left: nothing.
step leftovers bash -c 'c=0; for p in /sys/block/nbd*/pid; do [ -e "$p" ] && { echo "connected: $p"; c=1; }; done; losetup -a; pgrep -a "qemu-nbd|qemu-storage" && c=1; exit $c'
kill "$watcher" 2>/dev/null
rm -rf /repo/.nbd-vm-tmp
sync
say "done"
