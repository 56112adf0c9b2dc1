#!/usr/bin/env bash
# Set everything up, then run the whole test suite on the CPU, the linter/formatter check
# (ruff) and the type checker (mypy) on vision_pipe/ and plugins/.
# Exits non-zero when a test fails, when none ran, or when ruff or mypy find a problem.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VISION_PIPE_CACHE="${VISION_PIPE_CACHE:-$(mktemp -d)}"
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "no tests ran" >&2
  status=1
fi
echo "ruff check:" && .venv/bin/ruff check vision_pipe plugins || status=1
echo "ruff format --check:" && .venv/bin/ruff format --check vision_pipe plugins || status=1
echo "mypy:" && .venv/bin/mypy || status=1
exit "$status"
