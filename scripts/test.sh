#!/usr/bin/env bash
# Set everything up, then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VISION_PIPE_CACHE="${VISION_PIPE_CACHE:-$(mktemp -d)}"
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit "$status"
