"""The ``image_folder`` loading stage: one sub-folder of images per class.

Layouts::

    root/<class>/*.png                   → one "all" source (the pipeline splits it)
    root/{train,val,test}/<class>/*.png  → the folders are the splits (val, test optional)

Only the file listing is kept in memory; images are decoded when indexed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vision_pipe import (
    IMAGE_EXTENSION_LIST,
    SPLITS,
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


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name; DataError if there are none."""
    require_dir(root, "image folder", "'root' must be a folder with one sub-folder per class")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not folders:
        loose = "it holds images directly; " if list_images(root) else ""
        raise DataError(
            f"image folder {root} has no class folders: {loose}put the images of each class "
            f"into {root}/<class name>/ ({IMAGE_EXTENSION_LIST})"
        )
    return folders


class ImageFolderSource(SampleSource):
    """Labelled image files; samples are decoded when indexed."""

    def __init__(self, root: Path, paths: list[str], labels: list[int], class_names: list[str]) -> None:
        self.root = root
        self.paths = paths  #: file paths, sorted
        self.labels = labels  #: class index of each file
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        return {"image": read_image(path), "label": self.labels[index], "id": path}

    def fingerprint(self) -> str:
        # file and folder names are hashed as their bytes on disk: they need not be valid UTF-8
        digest = hashlib.sha256(b"\n".join(fs_key(name) for name in self.class_names))
        for path in self.paths:
            rel = Path(path).relative_to(self.root).as_posix()
            digest.update(b"\n" + fs_key(rel) + f"\t{file_stamp(Path(path))}".encode())
        return digest.hexdigest()


class ImageFolder(Loader):
    """The loader :func:`image_folder` returns."""

    tasks = ("classification",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def _index(self, folder: Path, class_names: list[str]) -> ImageFolderSource:
        paths: list[str] = []
        labels: list[int] = []
        for class_dir in _class_folders(folder):
            if class_dir.name not in class_names:
                raise DataError(
                    f"class folder {class_dir} is not a class of {self.root / 'train'} "
                    f"(classes: {', '.join(class_names)}): rename or remove it, or add it to train/"
                )
            images = list_images(class_dir)
            if not images:
                raise DataError(
                    f"class folder {class_dir} contains no images ({IMAGE_EXTENSION_LIST}): add images or remove the folder"
                )
            paths += [str(p) for p in images]
            labels += [class_names.index(class_dir.name)] * len(images)
        return ImageFolderSource(self.root, paths, labels, class_names)

    def load(self, task: str) -> LoadedData:
        if task not in self.tasks:
            raise StageError(f"loading 'image_folder': unknown task {task!r}; it serves {', '.join(self.tasks)}")
        folders = _class_folders(self.root)
        if not (self.root / "train").is_dir():
            class_names = [p.name for p in folders]
            return LoadedData(class_names, {"all": self._index(self.root, class_names)})
        others = [p.name for p in folders if p.name not in SPLITS]
        if others:
            raise DataError(
                f"image folder {self.root} has split folders (train/) and other folders ({', '.join(others)}): "
                "move those into train/, val/ or test/, or point 'root' at a folder without train/"
            )
        class_names = [p.name for p in _class_folders(self.root / "train")]
        splits = {s: self._index(self.root / s, class_names) for s in SPLITS if (self.root / s).is_dir()}
        return LoadedData(class_names, splits)


@stage("loading", "image_folder")
def image_folder(root: Path) -> Loader:
    """Images in ``root/<class>/`` (or ``root/{train,val,test}/<class>/``) for classification.

    - ``root``: the folder; class names are the sorted names of its class folders
      (of ``train/`` when it has split folders). Files ending in .jpg, .jpeg, .png
      or .bmp (any case) are images, searched recursively; other and hidden files
      are ignored.

    Samples: ``image`` (H, W, 3) uint8 RGB, ``label`` (class index), ``id`` (the path).
    """
    return ImageFolder(Path(root).expanduser())


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [image_folder]
