/**
 * Layer scripts written for the original vm-layer-builder (scons + qemu-nbd), as its users
 * wrote them: test/original-tool.test.ts migrates and builds them, test/nbd-vm runs the
 * modify-disk as it is on the nbd backend.
 */

/** The original's modify-disk: makes the overlay itself, attaches it with qemu-nbd and grows partition 1. */
export const GROW = `#!/bin/bash

set -e

if [ "$#" -ne 3 ]; then
    echo >&2 "Usage: $0 <source> <target> <device>"
    exit 1
fi

source="$1"
target="$2"
device="$3"

qemu-img create -f qcow2 -b "$source" -o compat=0.10 "$target" 128M

qemu-nbd --connect="$device" "$target"

trap "qemu-nbd --disconnect $device" EXIT

sleep 1

growpart "$device" 1

e2fsck -y -f "\${device}p1"
resize2fs -f "\${device}p1"
`;

export const COPY = `#!/bin/sh
# nocache (this hint tells vm-layer-builder to not cache the layer)
cp -a /mnt/files/. /
`;

/** A script with the hint that runs it to the original's contract: `# args source target device` after its shebang. */
export function withArgsHint(script: string): string {
  const [shebang, ...rest] = script.split('\n');
  return [shebang, '# args source target device', ...rest].join('\n');
}
