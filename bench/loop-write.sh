#!/usr/bin/env bash
# The reference for bench/run.ts's "write 500 MiB" row: the same dd as the layer script, onto
# an ext4 mounted from a plain loop device over a sparse raw file (no qcow2, no FUSE).
#
#   loop-write.sh WORKDIR SIZE MIB
#
# Prints "vmlb-bench start SECONDS" and "vmlb-bench end SECONDS" around the dd, like the
# layer script does. Releases whatever it holds on exit, interrupt or failure.
set -euo pipefail

work=$1 size=$2 mib=$3
raw=$work/plain.raw
mnt=$work/plain-mnt
mkdir -p "$mnt"

loop=''
cleanup() {
  set +e
  grep -qF " $mnt " /proc/self/mountinfo && umount "$mnt"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -f "$raw"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$raw"
truncate -s "$size" "$raw"
mke2fs -q -F -t ext4 "$raw"
loop=$(losetup --find --show "$raw")
mount "$loop" "$mnt"
sync
echo "vmlb-bench start $EPOCHREALTIME"
dd if=/dev/zero of="$mnt/data" bs=1M count="$mib" conv=fsync status=none
echo "vmlb-bench end $EPOCHREALTIME"
