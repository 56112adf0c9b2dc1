"""Multi-process runs (Lightning's DDP strategies): who does the shared work, and evaluation sampling.

vision-pipe does not distribute anything itself: ``trainer: {strategy: ddp,
devices: N, num_nodes: M}`` hands the run to Lightning, which starts the other
processes (or finds them started by SLURM / torchrun). What this module adds:

- **Rank 0 first.** The pre-flight pass and the normalization fit are done once,
  by rank 0, and cached on disk (keyed by the data's fingerprint); the other
  processes wait for the cache file and read it (:func:`wait_for_rank_zero`).
  Lightning's own ``ddp`` launcher starts the other ranks only when rank 0
  reaches ``trainer.fit``, i.e. after both are cached; processes started
  together (SLURM, torchrun) wait. The cache must be on a file system every
  node sees (``$VISION_PIPE_CACHE``); a rank that waits longer than
  ``$VISION_PIPE_RANK0_TIMEOUT`` seconds (default 3600) does the work itself.
- **One run directory.** Only rank 0 writes the run (config, logs, checkpoints,
  metrics, plots); the others work in a private temporary directory
  (:func:`private_run_dir`), and read rank 0's checkpoints (Lightning broadcasts
  the checkpoint directory).
- **No sample counted twice.** Lightning pads every rank's share of a split to
  the same length by repeating samples, which would count them twice in
  validation and test metrics; evaluation loaders use
  :func:`evaluation_sampler` instead (shares differ by at most one sample).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Sampler

#: Environment variables that hold a process's rank, as set by torchrun (RANK), SLURM
#: (SLURM_PROCID) and Lightning's own launcher (NODE_RANK, LOCAL_RANK for the processes it starts).
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
DEFAULT_TIMEOUT = 3600.0


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
    for name in _RANK_VARIABLES:
        if name == "SLURM_PROCID" and _int_env("SLURM_NTASKS") <= 1:
            continue
        if _int_env(name) != 0:
            return True
    return False


def wait_for_rank_zero(path: Path, what: str, *, timeout: float | None = None, poll: float = 0.5) -> bool:
    """In a secondary process, wait until rank 0 has written ``path``; True once it exists.

    Returns at once in rank 0 (or a single process). After ``timeout`` seconds
    (``$VISION_PIPE_RANK0_TIMEOUT``, default 3600) it returns False and the caller
    does the work itself (e.g. when the cache is not on a shared file system).
    """
    if not is_secondary_process() or path.exists():
        return path.exists()
    if timeout is None:
        timeout = float(os.environ.get("VISION_PIPE_RANK0_TIMEOUT", DEFAULT_TIMEOUT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(poll)
    import logging

    logging.getLogger("vision_pipe").warning(
        "waited %.0f s for rank 0's %s (%s); computing it in this process. Is $VISION_PIPE_CACHE on a file "
        "system every node sees?",
        timeout,
        what,
        path,
    )
    return False


def private_run_dir() -> Path:
    """A temporary run directory for a secondary process (removed when the process exits)."""
    path = Path(
        tempfile.mkdtemp(prefix=f"vision-pipe-rank{os.environ.get('RANK') or os.environ.get('LOCAL_RANK', 'x')}-")
    )
    (path / "plots").mkdir()
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def evaluation_sampler(dataset: Dataset, trainer: Any) -> Sampler | None:
    """For validation/test under a multi-process strategy: each sample in exactly one process.

    ``None`` (the default sequential order) for a single process or without a Trainer.
    """
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
