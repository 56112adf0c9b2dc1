#!/usr/bin/env bash
# Set everything up, then run the whole test suite on the CPU, the linter/formatter check
# (ruff: lint over the whole repository, format over vision_pipe/ and plugins/) and the type checker (mypy).
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
echo "ruff check:" && .venv/bin/ruff check . || status=1
echo "ruff format --check:" && .venv/bin/ruff format --check vision_pipe plugins || status=1
echo "mypy:" && .venv/bin/mypy || status=1
exit "$status"
