"""Similar images: embeddings from a fitted backbone, a persisted index of a folder, k-NN search, contact sheets.

Owns what ``vision-pipe similar`` does: :func:`embed` (images → the backbone's last feature map,
global-average-pooled, preprocessed exactly as :mod:`vision_pipe.predict` does), :func:`build_index`
(the embeddings of every image of a folder, kept in ``<folder>/.vision_pipe_index/``: ``embeddings.npy``
+ ``files.json`` with a fingerprint of the file list, sizes, mtimes, the weights' hash and the input
size; images that changed are embedded again, the others reused), :func:`knn` (exact Euclidean or cosine
k nearest neighbours in chunks of index rows, one matrix product and ``torch.topk`` each, or faiss when it
is installed and asked for) and :func:`contact_sheet` (the query and its neighbours with their distances).
:func:`find_similar` chains them for a :class:`~vision_pipe.Pipeline` loaded from a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import torch

from vision_pipe.errors import ConfigError, DataError
from vision_pipe.io import IMAGE_EXTENSION_LIST, atomic_write_bytes, atomic_write_text, list_images, write_png
from vision_pipe.module import PipelineModule, normalize_images
from vision_pipe.predict import autocast_dtype, input_batches, predict_device, predict_sample

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline

#: The index folder's default name, inside the indexed folder (hidden: never listed as images).
INDEX_DIR = ".vision_pipe_index"
#: Index rows per matrix product in :func:`knn`.
CHUNK_ROWS = 8192
Metric = Literal["euclidean", "cosine"]
METRICS = ("euclidean", "cosine")
_FORMAT = 1


# ----------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------


def embed(
    module: PipelineModule,
    items: Sequence[Any],
    input_size: tuple[int, int],
    batch_size: int,
    *,
    device: torch.device | None = None,
    precision: Any = "32",
) -> np.ndarray:
    """(N, C) float32 embeddings of ``items`` (paths or (H, W, 3) uint8 RGB arrays): the backbone's last
    (coarsest) feature map, averaged over its height and width, after the prediction transform and the
    pipeline's normalization. C is that map's channels."""
    device = device or next(module.parameters()).device
    module.to(device)
    dtype = autocast_dtype(device, precision)
    last = module.backbone.feature_info[-1].name
    was_training = module.training
    module.eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for _, batch in input_batches(items, input_size, batch_size):
                images = batch["image"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    x = normalize_images(images, module.normalizer, module.channels_last)
                    pooled = module.backbone(x).maps[last].float().mean(dim=(2, 3))  # (B, C)
                chunks.append(pooled.cpu().numpy().astype(np.float32))
    finally:
        module.train(was_training)
    channels = module.backbone.feature_info[-1].channels
    return np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)


def weights_hash(module: PipelineModule) -> str:
    """sha256 of the module's parameters and buffers (names, dtypes, shapes, values): what the index depends on."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# The persisted index
# ----------------------------------------------------------------------------


@dataclass
class ImageIndex:
    """The embeddings of a folder's images: ``files[i]`` (relative to ``root``, POSIX) has row ``embeddings[i]``."""

    root: Path
    files: list[str]
    embeddings: np.ndarray  #: (N, C) float32
    #: how it was obtained: ``"reused"`` (nothing changed), ``"updated"`` (some images embedded again), ``"built"``
    status: str = "built"
    embedded: int = 0  #: images embedded by this call
    stamps: dict[str, list[int]] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_index(index_dir: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """The saved fingerprint and embeddings, or ``None`` when missing, unreadable or inconsistent."""
    try:
        meta = json.loads((index_dir / "files.json").read_text(encoding="utf-8"))
        data = (index_dir / "embeddings.npy").read_bytes()
        if meta.get("format") != _FORMAT or meta.get("embeddings_sha256") != hashlib.sha256(data).hexdigest():
            return None
        embeddings = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if embeddings.ndim != 2 or embeddings.shape[0] != len(meta.get("files", [])):
        return None
    return meta, embeddings


def build_index(
    pipe: Pipeline,
    folder: str | Path,
    *,
    index_dir: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> ImageIndex:
    """The index of every image in ``folder`` (recursively; hidden files and folders skipped), loaded from
    ``index_dir`` (default ``<folder>/.vision_pipe_index``) when its fingerprint matches, else (re)built:
    with the same weights and input size, only new or changed images (size or mtime) are embedded again.
    Written atomically (``embeddings.npy`` first, then ``files.json`` holding its hash)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"--index {root}: not a folder; give the folder of images to search")
    where = Path(index_dir).expanduser() if index_dir is not None else root / INDEX_DIR
    images = list_images(root)
    if not images:
        raise DataError(f"--index {root}: the folder contains no images ({IMAGE_EXTENSION_LIST})")
    files = [p.relative_to(root).as_posix() for p in images]
    stamps = {f: _stamp(p) for f, p in zip(files, images, strict=True)}
    size = [int(v) for v in pipe.config.data.input_size]
    key = {"weights": weights_hash(pipe.module), "input_size": size}
    saved = _read_index(where)
    rows: dict[str, np.ndarray] = {}
    if saved is not None and saved[0].get("key") == key:
        meta, old = saved
        rows = {f: old[i] for i, f in enumerate(meta["files"]) if meta["stamps"].get(f) == stamps.get(f)}
        if len(rows) == len(files) and list(meta["files"]) == files:
            return ImageIndex(root, files, old, "reused", 0, stamps)
    todo = [f for f in files if f not in rows]
    trainer = pipe.config.trainer
    where_dev = predict_device(device, trainer.get("accelerator", "auto"))
    fresh = embed(
        pipe.module,
        [root / f for f in todo],
        (size[0], size[1]),
        batch_size or pipe.config.data.batch_size,
        device=where_dev,
        precision=trainer.get("precision", "32"),
    )
    rows.update(zip(todo, fresh, strict=True))
    embeddings = np.stack([rows[f] for f in files]).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    data = buffer.getvalue()
    where.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(where / "embeddings.npy", data)
    meta = {
        "format": _FORMAT,
        "key": key,
        "files": files,
        "stamps": stamps,
        "embeddings_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_text(where / "files.json", json.dumps(meta))
    status = "updated" if rows and len(todo) < len(files) else "built"
    return ImageIndex(root, files, embeddings, status, len(todo), stamps)


# ----------------------------------------------------------------------------
# k nearest neighbours
# ----------------------------------------------------------------------------


def knn(
    queries: np.ndarray | torch.Tensor,
    index: np.ndarray | torch.Tensor,
    k: int,
    metric: Metric = "euclidean",
    *,
    chunk_rows: int = CHUNK_ROWS,
    backend: Literal["torch", "faiss"] = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``index`` (N, C) for each of ``queries`` (Q, C).

    Returns ``(distances, indices)``, both (Q, min(k, N)), nearest first: Euclidean distances, or cosine
    distances ``1 - cos`` (in [0, 2]; vectors L2-normalized first). Index rows are scanned ``chunk_rows``
    at a time (one (Q, chunk) matrix product and ``torch.topk`` each), so memory stays O(Q·chunk); the
    distances of the chosen neighbours are then computed directly (an identical vector is at exactly 0).
    ``backend="faiss"`` uses a faiss flat index instead (``pip install faiss-cpu``).
    """
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    q = torch.as_tensor(np.asarray(queries, np.float32) if isinstance(queries, np.ndarray) else queries).float()
    x = torch.as_tensor(np.asarray(index, np.float32) if isinstance(index, np.ndarray) else index).float()
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise DataError(f"knn: queries {tuple(q.shape)} and index {tuple(x.shape)} must be (Q, C) and (N, C)")
    k = min(int(k), x.shape[0])
    if k < 1:
        raise DataError("knn: the index is empty or k < 1")
    if metric == "cosine":
        q, x = _l2_normalize(q), _l2_normalize(x)
    if backend == "faiss":
        indices = _faiss_search(q, x, k, metric)
    else:
        indices = _torch_search(q, x, k, chunk_rows)
    chosen = x[indices]  # (Q, k, C)
    d = torch.linalg.vector_norm(chosen - q[:, None, :], dim=2)  # (Q, k)
    distances = d if metric == "euclidean" else d.square() / 2  # |a - b|²/2 = 1 - cos for unit vectors
    order = torch.sort(distances, dim=1, stable=True)
    return order.values.numpy(), torch.gather(indices, 1, order.indices).numpy()


def _l2_normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)


def _torch_search(q: torch.Tensor, x: torch.Tensor, k: int, chunk_rows: int) -> torch.Tensor:
    """(Q, k) indices of the smallest squared Euclidean distances (|x|² - 2 q·x; |q|² is the same per query)."""
    best_d = torch.full((q.shape[0], 0), float("inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for start in range(0, x.shape[0], chunk_rows):
        rows = x[start : start + chunk_rows]
        d = rows.square().sum(dim=1)[None, :] - 2.0 * (q @ rows.T)  # (Q, chunk)
        cand_d = torch.cat([best_d, d], dim=1)
        cand_i = torch.cat([best_i, torch.arange(start, start + rows.shape[0]).expand(q.shape[0], -1)], dim=1)
        top = torch.topk(cand_d, min(k, cand_d.shape[1]), dim=1, largest=False)
        best_d, best_i = top.values, torch.gather(cand_i, 1, top.indices)
    return best_i


def faiss_available() -> bool:
    """Whether the optional faiss package can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_search(q: torch.Tensor, x: torch.Tensor, k: int, metric: Metric) -> torch.Tensor:
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError(
            "backend 'faiss': faiss is not installed (pip install faiss-cpu); use backend 'torch'"
        ) from exc
    flat = faiss.IndexFlatIP(x.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(x.shape[1])
    flat.add(np.ascontiguousarray(x.numpy()))
    _, indices = flat.search(np.ascontiguousarray(q.numpy()), k)
    return torch.from_numpy(indices.astype(np.int64))


# ----------------------------------------------------------------------------
# Contact sheets and the whole search
# ----------------------------------------------------------------------------


def contact_sheet(
    query: np.ndarray, neighbours: Sequence[np.ndarray], distances: Sequence[float], *, tile: int = 128
) -> np.ndarray:
    """One (tile + 20, (k + 1)·tile, 3) uint8 RGB row: the query (framed in red) then its neighbours, each
    resized to fit ``tile``×``tile`` px, with ``query`` / the distance written under each."""
    k = len(neighbours)
    sheet = np.full((tile + 20, (k + 1) * tile, 3), 255, np.uint8)
    labels = ["query", *[f"{d:.3g}" for d in distances]]
    for j, (image, text) in enumerate(zip([query, *neighbours], labels, strict=True)):
        h, w = image.shape[:2]
        scale = (tile - 4) / max(h, w)
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        y, x = (tile - small.shape[0]) // 2, j * tile + (tile - small.shape[1]) // 2
        sheet[y : y + small.shape[0], x : x + small.shape[1]] = small
        if j == 0:
            cv2.rectangle(sheet, (1, 1), (tile - 2, tile - 2), (220, 0, 0), 2)
        cv2.putText(sheet, text, (j * tile + 4, tile + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


@dataclass
class SimilarResult:
    """The neighbours of one query: ``neighbours[i]`` is at ``distances[i]``, nearest first."""

    query: str
    neighbours: list[str]
    distances: list[float]
    sheet: Path | None = None  #: the contact sheet PNG, when written

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "neighbours": [{"path": p, "distance": d} for p, d in zip(self.neighbours, self.distances, strict=True)],
        }


def find_similar(
    pipe: Pipeline,
    folder: str | Path,
    queries: Sequence[str | Path],
    *,
    k: int = 8,
    metric: Metric = "euclidean",
    index_dir: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    backend: Literal["auto", "torch", "faiss"] = "auto",
) -> tuple[ImageIndex, list[SimilarResult]]:
    """The ``k`` images of ``folder`` nearest to each query image (see :func:`build_index`, :func:`knn`).

    A query that is an unchanged image of the index uses its stored embedding. ``backend="auto"``
    uses faiss when it is installed, else torch. With ``out``, writes ``<out>/<query stem>_similar.png``
    contact sheets and ``<out>/similar.json``.
    """
    if not queries:
        raise DataError("similar: give at least one query image")
    index = build_index(pipe, folder, index_dir=index_dir, batch_size=batch_size, device=device)
    known = {os.path.realpath(p): i for i, p in enumerate(index.paths())}
    rows: list[np.ndarray | None] = []
    for q in queries:
        i = known.get(os.path.realpath(q))
        same = i is not None and Path(q).is_file() and _stamp(Path(q)) == index.stamps.get(index.files[i])
        rows.append(index.embeddings[i] if same and i is not None else None)
    todo = [n for n, r in enumerate(rows) if r is None]
    if todo:
        trainer = pipe.config.trainer
        size = pipe.config.data.input_size
        fresh = embed(
            pipe.module,
            [queries[n] for n in todo],
            (int(size[0]), int(size[1])),
            batch_size or pipe.config.data.batch_size,
            device=predict_device(device, trainer.get("accelerator", "auto")),
            precision=trainer.get("precision", "32"),
        )
        for n, vector in zip(todo, fresh, strict=True):
            rows[n] = vector
    use: Literal["torch", "faiss"] = (
        "faiss" if backend == "faiss" or (backend == "auto" and faiss_available()) else "torch"
    )
    distances, indices = knn(np.stack([r for r in rows if r is not None]), index.embeddings, k, metric, backend=use)
    paths = index.paths()
    results = [
        SimilarResult(str(q), [str(paths[j]) for j in indices[n]], [float(d) for d in distances[n]])
        for n, q in enumerate(queries)
    ]
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for n, result in enumerate(results):
            name = f"{Path(result.query).stem}_similar.png"
            name = name if name not in used else f"{Path(result.query).stem}_{n}_similar.png"
            used.add(name)
            sheet = contact_sheet(
                predict_sample(n, queries[n])["image"],
                [predict_sample(j, p)["image"] for j, p in enumerate(result.neighbours)],
                result.distances,
            )
            result.sheet = write_png(out_dir / name, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        atomic_write_text(out_dir / "similar.json", json.dumps([r.to_dict() for r in results], indent=1))
    return index, results


__all__ = [
    "INDEX_DIR",
    "ImageIndex",
    "SimilarResult",
    "build_index",
    "contact_sheet",
    "embed",
    "faiss_available",
    "find_similar",
    "knn",
    "weights_hash",
]
