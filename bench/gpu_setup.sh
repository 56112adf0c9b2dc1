#!/usr/bin/env bash
# Run ON THE GPU MACHINE (no package registry there), first in the device command: installs the wheels that
# bench/gpu_wheels.sh downloaded here (carried as bench/wheels) and this working tree's vision-pipe into
# /tmp/site, checks the imports and the plugin entry points, then runs the rest of its arguments with
# PYTHONPATH=/tmp/site:
#
#     bash bench/gpu_setup.sh python3 bench/gpu_check.py --out "$OUT"
#
# vision-pipe is installed (not editable) from the tree with --no-build-isolation and the carried setuptools;
# if that fails, a fallback puts links to vision_pipe/ and plugins/ (as vision_pipe_plugins) into /tmp/site
# with a hand-written .dist-info holding pyproject's entry points (what the plugin manager reads).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-bench/wheels}
start=$(date +%s)

ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_setup: no wheels in $WHEELS (run bash bench/gpu_wheels.sh here, carry bench/wheels)" >&2; exit 3; }
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  || { echo "gpu_setup: installing the wheels failed" >&2; exit 3; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" . ; then
  echo "gpu_setup: pip could not install vision-pipe from the tree; linking it into $SITE instead" >&2
  "$PY" - "$SITE" <<'EOF'
import sys, tomllib
from pathlib import Path

site, root = Path(sys.argv[1]), Path.cwd()
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
for name, folder in {"vision_pipe": "vision_pipe", "vision_pipe_plugins": "plugins"}.items():
    link = site / name
    if link.is_symlink() or link.exists():
        link.unlink() if link.is_symlink() else __import__("shutil").rmtree(link)
    link.symlink_to(root / folder)
info = site / f"vision_pipe-{project['version']}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
lines = []
for group, entries in {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}.items():
    lines += [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()] + [""]
(info / "entry_points.txt").write_text("\n".join(lines))
EOF
fi

"$PY" - <<'EOF' || { echo "gpu_setup: the imports failed" >&2; exit 3; }
from importlib import metadata

import albumentations, pycocotools, pydantic, pytorch_lightning, torch, torchmetrics, torchvision
import vision_pipe, vision_pipe_plugins

plugins = metadata.entry_points(group="vision_pipe.plugins")
assert len(plugins) >= 10, f"only {len(plugins)} vision_pipe.plugins entry points"
print(f"gpu_setup: python {__import__('sys').version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}), torchvision {torchvision.__version__}, "
      f"pytorch-lightning {pytorch_lightning.__version__}, torchmetrics {torchmetrics.__version__}, "
      f"albumentations {albumentations.__version__}, pydantic {pydantic.VERSION}; "
      f"vision-pipe from {vision_pipe.__file__} with {len(plugins)} plugin entry points")
EOF
echo "gpu_setup: ready in $(( $(date +%s) - start )) s"
if [ "$#" -gt 0 ]; then exec "$@"; fi
