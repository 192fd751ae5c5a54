#!/usr/bin/env bash
# The README's first command: set up, then build an example image: examples/debian (a real,
# bootable Debian; the first build takes a few minutes), or the one named (`npm run example hello`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
exec vmlb build "$repo/examples/${1:-debian}"
