"""The Python packages vision-pipe needs that the lent GPU machine lacks: ``name==version`` lines.

    .venv/bin/python bench/gpu_wheels.py [--show-skipped]

Used by ``bench/gpu_wheels.sh`` (which downloads their wheels). The list is the
closure of vision-pipe's requirements as installed in this environment (each
distribution's ``Requires-Dist``, markers evaluated for the device's Python 3.12
on x86-64 Linux, extras left out), pinned to the versions installed here (what
the tests run with), minus the packages the device's image already holds
(:data:`DEVICE_HAS`). The walk does not descend into a package the device has:
its own requirements are the image's business.

:data:`DEVICE_HAS` is copied from the workplace's device notes (KINDS.md,
``nvidia-h200``, "Python packages already there", read on such a machine on
2026-11-17): python3 there is Python 3.12.3 with torch 2.11.0, torchvision
0.26.0, pytorch-lightning 2.6.6, torchmetrics 1.9.0, numpy 2.5.2. Edit it if a
device run reports otherwise (``python3 -m pip show NAME`` there).

:data:`ALWAYS` are carried whatever the device has: ``setuptools`` (the build
backend that installs vision-pipe there, without a registry: pyproject needs
setuptools >= 77, the image's version is unknown) and ``typing-extensions``
(pydantic 2 needs a recent one; the image's version is unknown).
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement

#: the device image's packages (KINDS.md, nvidia-h200, read there on 2026-11-17)
DEVICE_HAS = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split()

#: carried whatever the device has (see the module docstring)
ALWAYS = ("setuptools", "typing-extensions")

#: the device's interpreter and platform, for evaluating requirement markers
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def canonical(name: str) -> str:
    """PEP 503 normalized name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(root: str = "vision-pipe") -> tuple[dict[str, str], set[str]]:
    """(packages to carry: name -> version installed here, packages skipped because the device has them)."""
    have = {canonical(n) for n in DEVICE_HAS}
    carry: dict[str, str] = {}
    skipped: set[str] = set()
    todo = [root]
    seen: set[str] = set()
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        if name != canonical(root) and name in have and name not in ALWAYS:
            skipped.add(name)
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"gpu_wheels: {name} is required but not installed here; install the project first")
        if name != canonical(root):
            carry[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not Marker(str(req.marker)).evaluate(DEVICE_MARKERS):
                continue  # an extra's requirement, or not for the device's Python / platform
            todo.append(req.name)
    for name in ALWAYS:
        carry.setdefault(name, metadata.version(name))
    return dict(sorted(carry.items())), skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show-skipped", action="store_true", help="also list (on stderr) what the device has")
    args = parser.parse_args()
    carry, skipped = needed()
    for name, version in carry.items():
        print(f"{name}=={version}")
    if args.show_skipped:
        print("on the device already: " + " ".join(sorted(skipped)), file=sys.stderr)


if __name__ == "__main__":
    main()
