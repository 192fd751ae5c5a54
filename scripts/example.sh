#!/usr/bin/env bash
# The README's first command: set up, then build the example image.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
exec vmlb build "$repo/examples/${1:-hello}"
