#!/usr/bin/env bash
# Installs what vm-layer-builder needs on a Debian host, idempotently and quickly when it is
# already there: the Debian packages, the npm packages (from the lockfile), the TypeScript
# build, and `vmlb` on the PATH (/usr/local/bin/vmlb).
#   VMLB_SETUP_EXTRA="pkg ..."   extra Debian packages (the test command adds its own)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: vm-layer-builder attaches disks (loop devices, FUSE, mounts): run it as root" >&2
  exit 2
fi

packages="qemu-utils qemu-system-common zstd qemu-system-x86 e2fsprogs fdisk cloud-guest-utils busybox-static fuse3 util-linux mmdebstrap mtools dosfstools bubblewrap slirp4netns iproute2 gcc libc6-dev ${VMLB_SETUP_EXTRA:-}"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.vmlb-lock-sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
npx --no-install turbo run build --output-logs=errors-only >/dev/null || npx --no-install turbo run build --output-logs=errors-only

ln -sf "$repo/apps/cli/bin/vmlb.js" /usr/local/bin/vmlb
echo "setup: ready — $(vmlb --version | sed 's/^/vmlb /') at /usr/local/bin/vmlb"
