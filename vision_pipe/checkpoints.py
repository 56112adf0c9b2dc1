"""Reading checkpoints and weight files: as weights only, unless the user trusts the file.

The one place where vision-pipe reads a torch file (:func:`load_torch_file`):
checkpoints (``predict``, ``Pipeline.load``, ``--ckpt``, ``--resume``) and
weight files (``model.backbone.weights``, a library backbone's ``pretrained``
file through :func:`load_weights_file`) — tensors and plain data only, never a
pickle that names code (``torch.load(..., weights_only=True)`` with the
allow-list :data:`CHECKPOINT_GLOBALS`; ``.safetensors`` files through
``safetensors``). A file that needs more is refused with a message naming what
it asks for, unless the caller passes ``trust=True`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vision_pipe.errors import StageError, VisionPipeError

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


#: How many keys of each kind a weights report or error names before "and N more".


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


__all__ = [
    "CHECKPOINT_GLOBALS",
    "TRUST_HINT",
    "allowed_globals",
    "load_torch_file",
    "load_weights_file",
    "read_checkpoint",
]
