#!/usr/bin/env bash
# The bare primitives one build-layer needs, with no engine around them, N times:
#   qemu-img create (overlay) → qemu-storage-daemon FUSE export → losetup (root partition's
#   range) → mount → chroot true → umount → losetup -d → daemon stop.
# The reference row of bench/run.ts's "engine overhead per layer".
#
#   primitives.sh BASE.qcow2 ROOT_OFFSET ROOT_SIZE WORKDIR N
#
# Prints one line per iteration: the step durations in seconds, as
#   create=… daemon=… losetup=… mount=… chroot=… umount=… detach=… stop=… total=…
# Releases whatever it holds on exit, interrupt or failure.
set -euo pipefail

base=$1 offset=$2 size=$3 work=$4 n=$5
ov=$work/overlay.qcow2
exp=$work/export.raw
pidf=$work/qsd.pid
mnt=$work/mnt
mkdir -p "$mnt"

daemon=''
loop=''
is_mounted() { grep -qF " $1 " /proc/self/mountinfo; }
cleanup() {
  set +e
  is_mounted "$mnt" && umount "$mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  if [ -n "$daemon" ]; then
    kill "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
  fi
  is_mounted "$exp" && umount "$exp"
  rm -f "$ov" "$exp" "$pidf"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Clock readings from $EPOCHREALTIME (bash 5: no fork); the arithmetic is done after each
# iteration, outside the measured steps.
stamps=()
step() { stamps+=("$1=$EPOCHREALTIME"); }

for ((i = 0; i < n; i++)); do
  stamps=()
  step start
  qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$ov"
  step create
  : > "$exp"
  qemu-storage-daemon \
    --blockdev "driver=qcow2,node-name=disk,file.driver=file,file.filename=$ov,file.aio=threads,cache.direct=off" \
    --export "type=fuse,id=exp,node-name=disk,mountpoint=$exp,writable=on" \
    --pidfile "$pidf" &
  daemon=$!
  # The pid file appears once the export is mounted (the engine polls the same way).
  until [ -e "$pidf" ]; do
    kill -0 "$daemon" 2>/dev/null || { echo "primitives: qemu-storage-daemon exited before its export was ready" >&2; exit 1; }
    sleep 0.002
  done
  step daemon
  loop=$(losetup --find --show --offset "$offset" --sizelimit "$size" "$exp")
  step losetup
  mount "$loop" "$mnt"
  step mount
  chroot "$mnt" /bin/true
  step chroot
  umount "$mnt"
  step umount
  losetup -d "$loop"
  loop=''
  step detach
  kill "$daemon"
  wait "$daemon" || true
  daemon=''
  step stop
  rm -f "$ov" "$exp" "$pidf"
  printf '%s\n' "${stamps[@]}" | awk -F= '
    NR == 1 { first = $2; prev = $2; next }
    { printf "%s=%.6f ", $1, $2 - prev; prev = $2 }
    END { printf "total=%.6f\n", prev - first }'
done
