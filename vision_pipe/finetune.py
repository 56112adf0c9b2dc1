"""Fine-tuning: reading weight files, loading them into a backbone, freezing parameters
and the batch-norm statistics of frozen layers.

Owns the one place where vision-pipe reads a torch file (:func:`load_torch_file`:
backbone ``weights`` and checkpoints) — as *weights only*: tensors and plain data,
never a pickle that names code (``torch.load(..., weights_only=True)`` with the
allow-list :data:`CHECKPOINT_GLOBALS`; ``.safetensors`` files through
``safetensors``). A file that needs more is refused with a message naming what
it asks for, unless the caller passes ``trust=True`` (``--trust-checkpoint``).
Also owns the ``model.backbone.weights`` / ``model.backbone.freeze`` semantics
(:func:`apply_weights_and_freeze`) and :class:`FrozenBatchNorm1d` /
:class:`FrozenBatchNorm2d`.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from vision_pipe.errors import ConfigError, StageError, VisionPipeError

#: The types a vision-pipe checkpoint holds beyond torch's own weights-only set
#: (tensors, ``OrderedDict``, numbers, strings, lists, tuples, dicts, ``None``).
#: Lightning's loop/callback/optimizer/scheduler state and our ``vision_pipe``
#: section are all plain data today (checked for every optimizer and schedule, and
#: bf16-mixed, with torch 2.14 / Lightning 2.6), so the list is empty;
#: ``tests/vision_pipe/test_trust.py`` checks a real checkpoint against it and fails
#: the day one needs more.
CHECKPOINT_GLOBALS: tuple[Any, ...] = ()

TRUST_HINT = (
    "if you trust where it came from, pass --trust-checkpoint (Python: trust=True) to load it in full — "
    "unpickling runs whatever code the file names"
)


@contextlib.contextmanager
def allowed_globals() -> Iterator[None]:
    """Within this block, weights-only loads (ours and Lightning's) also accept :data:`CHECKPOINT_GLOBALS`."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if not CHECKPOINT_GLOBALS or safe_globals is None:
        yield
        return
    with safe_globals(list(CHECKPOINT_GLOBALS)):
        yield


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """What a refused file asks for, read from its pickle without running it (or from torch's message)."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        found = []
    return found or re.findall(r"GLOBAL ([\w.]+)", str(exc))


def load_torch_file(path: str | Path, *, trust: bool = False, what: str = "checkpoint") -> Any:
    """Read a weights file or checkpoint onto the CPU, as weights only unless ``trust``.

    ``.safetensors`` files are read with ``safetensors`` (tensors only, never code).
    Anything else goes through ``torch.load(weights_only=True)`` with
    :data:`CHECKPOINT_GLOBALS` allowed; a file whose pickle names other code is
    refused with a :class:`VisionPipeError` naming the file, what it asks for and
    ``--trust-checkpoint``. ``trust=True`` unpickles in full (only for files you trust).
    Other read errors propagate (the callers name the file).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with allowed_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise
        asks = ", ".join(_unsafe_globals(path, exc))
        if asks:
            why = f"it asks for {asks}, not tensors or plain data, so reading it could run code"
        else:
            detail = re.search(r"Unsupported [^\n]*?(?=\.?\n|\.?$)", str(exc))
            why = "it cannot be read as tensors and plain data" + (f" ({detail.group(0)})" if detail else "")
        raise VisionPipeError(
            f"{path}: refusing to load this {what}: {why}. "
            f"vision-pipe reads checkpoints and weights as weights only; {TRUST_HINT}"
        ) from None


def read_checkpoint(path: str | Path, *, trust: bool = False, to: str = "load") -> dict[str, Any]:
    """A vision-pipe checkpoint (``state_dict`` + the ``vision_pipe`` section); :class:`VisionPipeError` otherwise.

    Read as weights only unless ``trust`` (see :func:`load_torch_file`). ``to`` says what the
    checkpoint is for in messages (``"load"``, ``"resume from"``).
    """
    path = Path(path)
    if not path.is_file():
        raise VisionPipeError(f"checkpoint not found: {path} (the checkpoint to {to})")
    try:
        ckpt = load_torch_file(path, trust=trust)
    except VisionPipeError:
        raise
    except Exception as exc:
        raise VisionPipeError(
            f"{path}: cannot {to} this file: it is not a complete checkpoint (truncated or damaged? "
            f"{type(exc).__name__}: {exc}); use another checkpoint of the run (e.g. best.ckpt)"
        ) from exc
    if not isinstance(ckpt, dict) or "vision_pipe" not in ckpt or "state_dict" not in ckpt:
        raise VisionPipeError(f"{path}: cannot {to} it: not a vision-pipe checkpoint (no 'vision_pipe' section)")
    return ckpt


def load_weights(backbone: nn.Module, weights: str | Path, where: str, *, trust: bool = False) -> None:
    """Load a state dict (``.safetensors`` or torch), or the ``backbone.*`` part of a vision-pipe/Lightning
    checkpoint, into ``backbone``; read as weights only unless ``trust`` (see :func:`load_torch_file`)."""
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"backbone weights file not found: {path}", location=where.split(": ")[0], key="model.backbone.weights"
        )
    try:
        state = load_torch_file(path, trust=trust, what="weights file")
    except VisionPipeError as exc:
        raise StageError(f"{where}: model.backbone.weights: {exc}") from None
    except Exception as exc:
        raise StageError(f"{where}: cannot read backbone weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise StageError(f"{where}: weights {path} do not fit the backbone: {exc}") from exc


def load_weights_file(path: str | Path, *, trust: bool = False, what: str = "weights file") -> dict[str, Any]:
    """A state dict read from a ``.safetensors`` or torch file, as weights only unless ``trust``.

    For plugins that load a library's own weight files (timm's, torchvision's): the file
    is read by :func:`load_torch_file` (no code runs unless ``trust``); a file holding
    ``{"state_dict": ...}`` or ``{"model": ...}`` gives that dict. Raises
    :class:`StageError` naming the file: not found, unreadable, refused (with the
    reason and ``--trust-checkpoint``), or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{what} not found: {path}")
    try:
        state = load_torch_file(path, trust=trust, what=what)
    except VisionPipeError as exc:
        raise StageError(str(exc)) from None
    except Exception as exc:
        raise StageError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StageError(f"{path}: not a {what}: expected a mapping of parameter names to tensors (a state dict)")
    return dict(state)


def freeze(backbone: nn.Module, prefixes: str | Sequence[str], where: str) -> None:
    """Stop training the parameters under each dotted prefix (``"stem"``, ``"layer1.0"``);
    batch-norm layers left without trainable parameters keep their running statistics."""
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    names = [n for n, _ in backbone.named_parameters()]
    for prefix in prefixes:
        matched = {
            n
            for n in names
            if n == prefix or n.startswith(prefix + ".") or (prefix.endswith(".") and n.startswith(prefix))
        }
        if not matched:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"freeze prefix '{prefix}' matches no backbone parameter; top-level modules: {', '.join(tops)}",
                location=where.split(": ")[0],
                key="model.backbone.freeze",
            )
        for n, p in backbone.named_parameters():
            if n in matched:
                p.requires_grad_(False)
    freeze_batch_norm_statistics(backbone)


def apply_weights_and_freeze(
    backbone: nn.Module, spec: dict[str, Any], where: str, *, trust: bool = False, weights: bool = True
) -> None:
    """Apply a backbone entry's ``weights`` (a file; skipped when not ``weights``) and ``freeze``
    (prefixes) to the built backbone; ``trust`` as in :func:`load_torch_file`."""
    if weights and spec.get("weights"):
        load_weights(backbone, spec["weights"], where, trust=trust)
    freeze(backbone, spec.get("freeze") or [], where)


_M = TypeVar("_M", bound=nn.Module)


class _FrozenStatistics(nn.Module):
    """Mixin for a batch-norm layer whose parameters are frozen: it stays in eval mode, so it
    normalizes with (and keeps) its running statistics instead of updating them from batches."""

    def train(self: _M, mode: bool = True) -> _M:
        return super().train(False)


class FrozenBatchNorm1d(_FrozenStatistics, nn.BatchNorm1d):
    """A frozen :class:`torch.nn.BatchNorm1d` (see :func:`freeze_batch_norm_statistics`)."""


class FrozenBatchNorm2d(_FrozenStatistics, nn.BatchNorm2d):
    """A frozen :class:`torch.nn.BatchNorm2d` (see :func:`freeze_batch_norm_statistics`)."""


_FROZEN_BN: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
}


def freeze_batch_norm_statistics(backbone: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen stop updating their running statistics.

    Fine-tuning with frozen layers means the layers do not change; a batch-norm
    layer in train mode would still move its running mean/var to the new data
    (and normalize with batch statistics). Its class is switched to a subclass
    that stays in eval mode; its state_dict is unchanged.
    """
    for module in backbone.modules():
        frozen_class = _FROZEN_BN.get(type(module))
        params = list(module.parameters(recurse=False))
        if frozen_class is not None and params and not any(p.requires_grad for p in params):
            module.__class__ = frozen_class
            module.eval()


__all__ = [
    "CHECKPOINT_GLOBALS",
    "TRUST_HINT",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "allowed_globals",
    "apply_weights_and_freeze",
    "freeze",
    "freeze_batch_norm_statistics",
    "load_torch_file",
    "load_weights",
    "load_weights_file",
    "read_checkpoint",
]
