"""Which process of a multi-process run this is, read from the launcher's environment (no torch import,
so that the torch-free commands, e.g. ``predict model.onnx``, can ask too)."""

from __future__ import annotations

import os

#: Environment variables that hold a process's rank, as set by torchrun (RANK), SLURM
#: (SLURM_PROCID) and Lightning's own launcher (NODE_RANK, LOCAL_RANK for the processes it starts).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


def is_secondary_process() -> bool:
    """True in a process of a multi-process run that is not global rank 0.

    Read from the launcher's environment, so it works before any process group
    exists (the pre-flight pass and the normalization fit run before the Trainer).
    ``SLURM_PROCID`` counts only in a job step of several tasks.
    """
    for name in RANK_VARIABLES:
        if name == "SLURM_PROCID" and _int_env("SLURM_NTASKS") <= 1:
            continue
        if _int_env(name) != 0:
            return True
    return False
