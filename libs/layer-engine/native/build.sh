#!/usr/bin/env bash
# Compiles the engine's one native helper (vmlb-sandbox-mount, see its source) into dist/native/.
# Needs a C compiler and the kernel headers of libc (Debian: gcc, libc6-dev; setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist/native
out=dist/native/vmlb-sandbox-mount
src=native/vmlb-sandbox-mount.c
if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
  cc -O2 -Wall -Wextra -Werror -o "$out.tmp" "$src"
  mv "$out.tmp" "$out"
fi
