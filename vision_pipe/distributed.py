"""Multi-process runs (Lightning's DDP strategies): who does the shared work, and evaluation sampling.

vision-pipe does not distribute anything itself: ``trainer: {strategy: ddp,
devices: N, num_nodes: M}`` hands the run to Lightning, which starts the other
processes (or finds them started by SLURM / torchrun). What this module adds:

(Which process is rank 0 is read from the environment by :mod:`vision_pipe.ranks`, without torch.)

- **Rank 0 first.** The pre-flight pass and the normalization fit are done once,
  by rank 0, and cached on disk (keyed by the data's fingerprint); the other
  processes wait for the cache file and read it (:func:`wait_for_rank_zero`).
  Lightning's own ``ddp`` launcher starts the other ranks only when rank 0
  reaches ``trainer.fit``, i.e. after both are cached; processes started
  together (SLURM, torchrun) wait. The cache must be on a file system every
  node sees (``$VISION_PIPE_CACHE``): rank 0 leaves a marker there and names it
  in the environment its launcher passes on (:func:`share_cache`), so a rank
  that cannot see it stops at once saying so; a rank started otherwise waits
  at most ``$VISION_PIPE_RANK0_TIMEOUT`` seconds (default 1500, below the
  process group's own 30-minute timeout), then does the work itself.
- **One output folder.** ``test`` after ``fit`` reads rank 0's best checkpoint in
  every process, so every process must see rank 0's run directory;
  :func:`check_shared_run_dir` says so at the start of a fit, in every process
  alike (no process left waiting in a collective).
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
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Sampler

from vision_pipe.ranks import is_secondary_process

#: Seconds a secondary process waits for rank 0's cache: below torch.distributed's default
#: process-group timeout (30 minutes), so the wait never outlasts the group it waits for.
DEFAULT_TIMEOUT = 1500.0
#: The environment variable naming rank 0's marker in the cache folder (inherited by the ranks it launches).
MARKER_ENV = "VISION_PIPE_RANK0_MARKER"


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


def share_cache(cache: Path) -> None:
    """Rank 0: leave a marker in the ``cache`` folder and name it in ``$VISION_PIPE_RANK0_MARKER``, which
    the processes Lightning's launcher starts inherit (removed when the process exits). A secondary
    process given that name checks the marker: when it cannot see it, the cache folder is not shared
    and waiting for rank 0's results there would end in the process group's timeout, so it stops now.
    """
    marker = os.environ.get(MARKER_ENV)
    if is_secondary_process():
        if marker and not Path(marker).exists():
            from vision_pipe.errors import VisionPipeError

            raise VisionPipeError(
                f"this process (rank {os.environ.get('RANK') or os.environ.get('LOCAL_RANK', '?')}, host "
                f"{socket.gethostname()}) cannot see rank 0's cache folder ({Path(marker).parent.parent}, "
                "$VISION_PIPE_CACHE): a run of several processes needs it on a file system every node sees; "
                "set VISION_PIPE_CACHE to such a folder on every node"
            )
        return
    if marker and Path(marker).exists():
        return
    path = cache / "ranks" / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("rank 0 of a vision-pipe run; removed when it exits\n", encoding="utf-8")
    os.environ[MARKER_ENV] = str(path)
    atexit.register(path.unlink, missing_ok=True)


def check_shared_run_dir(trainer: Any, run_dir: Path) -> None:
    """In every process of a multi-process fit: :class:`VisionPipeError` (in all of them alike) unless
    each one sees rank 0's run directory (``output_dir`` on a shared file system), which ``test`` after
    ``fit`` needs to read rank 0's checkpoints."""
    if getattr(trainer, "world_size", 1) <= 1:
        return
    root = trainer.strategy.broadcast(str(run_dir), src=0)
    if not trainer.strategy.reduce_boolean_decision(Path(root).is_dir(), all=True):
        from vision_pipe.errors import VisionPipeError

        raise VisionPipeError(
            f"rank 0's run directory {root} is not visible in every process: a run of several nodes needs "
            "output_dir on a file system every node sees (test reads rank 0's checkpoints); set output_dir "
            "to such a folder"
        )


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
