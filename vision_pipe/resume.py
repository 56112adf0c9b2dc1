"""Resuming a fit: the check of the checkpoint to resume from, and the random state a checkpoint carries.

- :func:`check_resume_checkpoint` reads the checkpoint before anything is
  written and raises one :class:`~vision_pipe.errors.VisionPipeError` naming the
  file and what differs: a truncated or damaged file, a file without training
  state, another pipeline's checkpoint (task, model, class names, optimizer),
  weights whose names or shapes do not fit this pipeline's model.
- :class:`RandomState`, a Lightning callback, stores the random-number states
  (torch, CUDA, NumPy, Python) in every checkpoint and restores them when a fit
  resumes, so a resumed run draws the same augmentations and batch order as an
  uninterrupted one (Lightning itself keeps the optimizer, scheduler, callbacks
  and loop state).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from vision_pipe.errors import VisionPipeError

#: What a checkpoint must hold to continue training (Lightning's training state).
_TRAINING_STATE = ("optimizer_states", "loops", "epoch", "global_step")
#: How many differences of each kind a message lists.
_SHOWN = 5


def check_resume_checkpoint(
    path: str | Path, resolved: dict[str, Any], class_names: list[str], model: torch.nn.Module, *, trust: bool = False
) -> None:
    """Raise a :class:`VisionPipeError` naming ``path`` unless a fit of this pipeline can resume from it.

    ``resolved`` is the pipeline's resolved config, ``model`` its LightningModule; the file is read
    as weights only unless ``trust`` (see :func:`vision_pipe.checkpoints.load_torch_file`).
    Options that may change on a resume (trainer, data, learning rate ...) are not compared.
    """
    from vision_pipe.checkpoints import read_checkpoint

    path = Path(path)
    ckpt = read_checkpoint(path, trust=trust, to="resume from")
    missing = [k for k in _TRAINING_STATE if k not in ckpt]
    if missing:
        raise VisionPipeError(
            f"{path}: cannot resume: the checkpoint holds weights only (no {', '.join(missing)}); "
            "to start a new fit from its weights, use model.backbone.weights"
        )
    info = ckpt["vision_pipe"]
    differences = _config_differences(info.get("config") or {}, resolved)
    theirs = list(info.get("class_names") or [])
    if theirs != list(class_names):
        differences.append(f"class names: {_short(theirs)} in the checkpoint, {_short(class_names)} here")
    if differences:
        raise VisionPipeError(
            f"{path}: cannot resume: the checkpoint was written by another pipeline; "
            + "; ".join(differences)
            + ". Resume with the config that wrote it (its run's config.yaml), or start a new fit"
        )
    shapes = _shape_differences(ckpt["state_dict"], model.state_dict())
    if shapes:
        raise VisionPipeError(
            f"{path}: cannot resume: the checkpoint's weights do not fit this pipeline's model; " + "; ".join(shapes)
        )


def _config_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What makes ``theirs`` another pipeline than ``ours``: task, backbone, head, optimizer and schedule names."""
    keys = [("task",), ("optimizer", "name"), ("scheduler", "name")]
    out = [_differs(k, _get(theirs, k), _get(ours, k)) for k in keys]
    for part in ("backbone", "head"):
        a, b = _get(theirs, ("model", part)) or {}, _get(ours, ("model", part)) or {}
        for key in sorted(set(a) | set(b)):
            if key != "weights":  # the initial weights are replaced by the checkpoint's
                out.append(_differs(("model", part, key), a.get(key), b.get(key)))
    found = [d for d in out if d]
    return found[:_SHOWN] + ([f"{len(found) - _SHOWN} more"] if len(found) > _SHOWN else [])


def _get(data: Any, key: tuple[str, ...]) -> Any:
    for part in key:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _differs(key: tuple[str, ...], theirs: Any, ours: Any) -> str:
    return "" if theirs == ours else f"{'.'.join(key)}: {theirs!r} in the checkpoint, {ours!r} here"


def _short(names: list[str]) -> str:
    return repr(names) if len(names) <= 8 else f"{len(names)} classes {names[:4]!r}..."


def _shape_differences(theirs: dict[str, Any], ours: dict[str, torch.Tensor]) -> list[str]:
    out = []
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing:
        out.append(
            f"missing in the checkpoint: {', '.join(missing[:_SHOWN])}" + (" ..." if len(missing) > _SHOWN else "")
        )
    if unexpected:
        more = " ..." if len(unexpected) > _SHOWN else ""
        out.append(f"not in this model: {', '.join(unexpected[:_SHOWN])}{more}")
    shapes = [
        f"{k} is {tuple(theirs[k].shape)} in the checkpoint, {tuple(v.shape)} here"
        for k, v in ours.items()
        if k in theirs and isinstance(theirs[k], torch.Tensor) and theirs[k].shape != v.shape
    ]
    return out + shapes[:_SHOWN] + ([f"{len(shapes) - _SHOWN} more shapes differ"] if len(shapes) > _SHOWN else [])


# ----------------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """The process's random-number states, as tensors, lists and numbers only (readable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": list(random.getstate()),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RandomState(pl.Callback):
    """Stores the random-number states in every checkpoint and restores them when a fit resumes.

    A checkpoint is written at the end of an epoch; the states restored before the
    resumed run starts are those the next epoch of an uninterrupted run starts with
    (the sanity check runs in an isolated random state).
    """

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)


__all__ = ["RandomState", "check_resume_checkpoint", "rng_states", "set_rng_states"]
