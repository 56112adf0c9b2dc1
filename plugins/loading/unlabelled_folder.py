"""The ``unlabelled_folder`` loading stage: every image under a folder, without labels (reconstruction).

Learning from unlabelled images (an autoencoder) needs images and nothing else:
the files are found recursively under ``root`` (hidden files and folders
skipped), sorted by path; the pipeline splits them by ``data.split``. Only the
listing is kept in memory; images are decoded when indexed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vision_pipe import (
    IMAGE_EXTENSION_LIST,
    DataError,
    LoadedData,
    Loader,
    Sample,
    SampleSource,
    StageError,
    file_stamp,
    fs_key,
    hookimpl,
    list_images,
    read_image,
    require_dir,
    stage,
)


class UnlabelledSource(SampleSource):
    """Image files under ``root``; samples (``image``, ``id``) are decoded when indexed."""

    def __init__(self, root: Path, paths: list[Path]) -> None:
        self.root = root
        self.paths = paths  #: image files, sorted

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        return {"image": read_image(path), "id": str(path)}

    def fingerprint(self) -> str:
        # names are hashed as their bytes on disk: they need not be valid UTF-8
        digest = hashlib.sha256(b"unlabelled_folder")
        for path in self.paths:
            digest.update(b"\n" + fs_key(path.relative_to(self.root).as_posix()) + f"\t{file_stamp(path)}".encode())
        return digest.hexdigest()


class UnlabelledFolder(Loader):
    """The loader :func:`unlabelled_folder` returns."""

    tasks = ("reconstruction",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, task: str) -> LoadedData:
        if task not in self.tasks:
            raise StageError(f"loading 'unlabelled_folder': unknown task {task!r}; it serves {', '.join(self.tasks)}")
        require_dir(self.root, "unlabelled image folder", "'root' must be a folder of images (searched recursively)")
        paths = list_images(self.root)
        if not paths:
            raise DataError(
                f"unlabelled image folder {self.root} holds no images ({IMAGE_EXTENSION_LIST}), recursively"
            )
        return LoadedData(class_names=[], splits={"all": UnlabelledSource(self.root, paths)})


@stage("loading", "unlabelled_folder")
def unlabelled_folder(root: Path) -> Loader:
    """Every image under ``root`` (recursively), without labels, for reconstruction (an autoencoder).

    - ``root``: the folder. Files ending in .jpg, .jpeg, .png or .bmp (any case) are images;
      other and hidden files and folders are ignored. The pipeline splits them by ``data.split``.

    Samples: ``image`` (H, W, 3) uint8 RGB, ``id`` (the path).
    """
    return UnlabelledFolder(Path(root).expanduser())


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [unlabelled_folder]
