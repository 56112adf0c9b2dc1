#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI) before a GPU session: downloads into bench/wheels/ (ignored by git)
# the wheels of the packages vision-pipe needs that the lent GPU machine lacks, for ITS interpreter
# (CPython 3.12, x86-64 manylinux). The list and versions come from bench/gpu_wheels.py (the closure of
# vision-pipe's requirements as installed in .venv, minus the device image's packages). Prints each wheel's
# size and the total, and warns when the working tree + wheels exceed the device tool's 64 MiB.
#
#     bash bench/gpu_wheels.sh            # PYTHON=... to use another interpreter than .venv/bin/python
#
# On the device, bench/gpu_setup.sh installs them (no registry there); BENCHMARKS.md, "First GPU run: how".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=bench/wheels
LIMIT=$((64 * 1024 * 1024))  # the device tool's limit on the working tree + carried paths

mapfile -t REQS < <("$PY" bench/gpu_wheels.py)
[ "${#REQS[@]}" -gt 0 ] || { echo "gpu_wheels: no requirement listed" >&2; exit 1; }
rm -rf "$DEST" && mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
for req in "${REQS[@]}"; do
  echo "== $req"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$req"
done

echo
echo "wheels in $DEST:"
ls -l "$DEST" | awk 'NR > 1 {printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}'
# one wheel per package: two versions of one stop the whole install there
n_wheels=$(ls "$DEST"/*.whl | wc -l)
[ "$n_wheels" -eq "${#REQS[@]}" ] || echo "WARNING: ${#REQS[@]} requirements but $n_wheels wheels in $DEST" >&2
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((wheels + tree))
printf 'total: wheels %.2f MiB + working tree %.2f MiB = %.2f MiB (limit 64 MiB)\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "WARNING: over the device tool's 64 MiB (working tree + carry): the call would be refused" >&2
  exit 1
fi
