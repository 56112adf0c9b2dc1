"""vision-pipe similar: k-NN against brute force, the persisted index, and the CLI on a tiny checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_pipe import Pipeline
from vision_pipe.cli import main
from vision_pipe.similar import INDEX_DIR, build_index, contact_sheet, find_similar, knn


def brute_force(q: np.ndarray, x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference: every distance, then a full argsort."""
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1.0 - q.astype(np.float64) @ x.T.astype(np.float64)
    else:
        d = np.linalg.norm(q[:, None, :].astype(np.float64) - x[None, :, :], axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_matches_brute_force_across_chunks(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    ref_d, ref_i = brute_force(q, x, 5, metric)
    d, i = knn(q, x, 5, metric, chunk_rows=97)  # 11 chunks, the last one partial
    assert d.shape == (7, 5) and i.shape == (7, 5)
    assert np.array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-5)
    # an index row as query: itself first, at distance exactly 0
    d, i = knn(x[[42, 7]], x, 3, metric, chunk_rows=128)
    assert list(i[:, 0]) == [42, 7] and np.all(d[:, 0] == 0.0)
    # k larger than the index: every row once
    d, i = knn(q[:1], x[:4], 10, metric)
    assert sorted(i[0].tolist()) == [0, 1, 2, 3]


def test_contact_sheet_is_one_row_of_tiles() -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    sheet = contact_sheet(image, [image, image], [0.0, 1.5], tile=64)
    assert sheet.shape == (84, 192, 3) and sheet.dtype == np.uint8
    assert tuple(sheet[1, 1]) == (220, 0, 0)  # the query's frame


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def _folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / ("sub" if i % 2 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (16 + i, 20, 3), dtype=np.uint8))
    return root


def test_index_is_reused_updated_and_rebuilt(checkpoint: Path, tmp_path: Path) -> None:
    pipe = Pipeline.load(checkpoint)
    folder = _folder(tmp_path / "images")
    first = build_index(pipe, folder)
    assert (first.status, first.embedded, len(first.files)) == ("built", 6, 6)
    assert first.files[0] == "img0.png" and "sub/img1.png" in first.files
    assert first.embeddings.shape == (6, pipe.module.backbone.feature_info[-1].channels)
    assert (folder / INDEX_DIR / "embeddings.npy").is_file()
    again = build_index(pipe, folder)
    assert (again.status, again.embedded) == ("reused", 0) and np.array_equal(again.embeddings, first.embeddings)
    # a new file: only it is embedded; the others keep their rows
    cv2.imwrite(str(folder / "new.png"), np.full((16, 16, 3), 200, np.uint8))
    added = build_index(pipe, folder)
    assert (added.status, added.embedded, len(added.files)) == ("updated", 1, 7)
    assert np.array_equal(added.embeddings[added.files.index("img0.png")], first.embeddings[0])
    # a modified file (other pixels, other mtime): embedded again, with another embedding
    target = folder / "img0.png"
    cv2.imwrite(str(target), np.zeros((16, 20, 3), np.uint8))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    modified = build_index(pipe, folder)
    assert (modified.status, modified.embedded) == ("updated", 1)
    assert not np.allclose(modified.embeddings[modified.files.index("img0.png")], first.embeddings[0])
    # a corrupt files.json (or another index dir): rebuilt from scratch
    (folder / INDEX_DIR / "files.json").write_text("{", encoding="utf-8")
    assert build_index(pipe, folder).status == "built"
    assert build_index(pipe, folder, index_dir=tmp_path / "elsewhere").status == "built"


def test_find_similar_query_from_the_index_is_itself_at_zero(checkpoint: Path, tmp_path: Path) -> None:
    pipe = Pipeline.load(checkpoint)
    folder = _folder(tmp_path / "images")
    outside = tmp_path / "query.png"
    outside.write_bytes((folder / "sub" / "img3.png").read_bytes())  # same pixels, not in the index
    index, results = find_similar(pipe, folder, [folder / "img2.png", outside], k=3, metric="cosine")
    assert results[0].neighbours[0] == str(folder / "img2.png") and results[0].distances[0] == 0.0
    assert results[1].neighbours[0] == str(folder / "sub" / "img3.png") and results[1].distances[0] < 1e-5
    row = index.files.index("img2.png")
    ref_d, ref_i = brute_force(index.embeddings[[row]], index.embeddings, 3, "cosine")
    assert [str(index.paths()[j]) for j in ref_i[0]] == results[0].neighbours
    np.testing.assert_allclose(results[0].distances, ref_d[0], atol=1e-5)


def test_cli_end_to_end(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path / "images")
    out = tmp_path / "out"
    query = folder / "sub" / "img1.png"
    argv = ["similar", str(checkpoint), "--index", str(folder), "--query", str(query), "-k", "4", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"index: 6 image(s) of {folder}, built (6 embedded)" in text
    assert f"   1.     0.0000  {query}" in text
    sheet = cv2.imread(str(out / "img1_similar.png"))
    assert sheet.shape == (148, 5 * 128, 3)
    saved = json.loads((out / "similar.json").read_text())
    assert saved[0]["query"] == str(query) and len(saved[0]["neighbours"]) == 4
    distances = [n["distance"] for n in saved[0]["neighbours"]]
    assert distances == sorted(distances) and distances[0] == 0.0
    assert main(argv) == 0
    assert "reused (0 embedded)" in capsys.readouterr().out
