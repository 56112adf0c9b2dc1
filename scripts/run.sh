#!/usr/bin/env bash
# Set everything up, then run the main job: fit and test the shapes classification pipeline
# on the shipped synthetic data; prints the test metrics and the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vision-pipe fit pipelines/shapes_classification.yaml "$@"
