"""Image datasets stored as JPEG files, decoded with PIL.

- **ImageNet** as class folders: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*``
  (the usual layout after the validation images are sorted into class folders). Classes
  are the sorted folder names of ``train``; ``val`` may not hold a class ``train`` lacks.
- **Tiny-ImageNet** in its standard layout (``tiny-imagenet-200``): ``wnids.txt``,
  ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt`` (tab-separated: file, wnid, box). Classes are the sorted
  wnids of ``wnids.txt``.

Images are decoded when a batch is built (in DataLoader workers with ``workers > 0``).
"""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import SpruceError
from .base import DataSplits, Split, stack_images
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Transform, cifar_train,
                         imagenet_eval, imagenet_train, plain_eval)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def decode(path: Path) -> torch.Tensor:
    """uint8 ``[3, H, W]`` from an image file (any mode is converted to RGB)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading JPEG datasets needs Pillow: pip install pillow==13.0.0") \
            from None
    _regular(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SpruceError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class ImageFiles(Split):
    """``(file, label)`` pairs, decoded and transformed per sample."""

    def __init__(self, files: list[Path], labels: list[int], transform: Transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def item(self, index: int, gen: torch.Generator | None) -> tuple[torch.Tensor, int]:
        return self.transform(decode(self.files[index]), gen), self.labels[index]

    def collate(self, items):
        return stack_images(items)


def _regular(path: Path) -> Path:
    """``path`` if it is a regular file: a pipe or device named like an image would block
    the reader forever, a folder would fail later with a less clear error."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise SpruceError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise SpruceError(f"{path}: not a regular file (a folder, pipe or device named like "
                          "an image); remove it from the dataset")
    return path


def _text(file: Path) -> str:
    try:
        return _regular(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = file.read_bytes()[:e.start].count(b"\n") + 1
        raise SpruceError(f"{file}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") \
            from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(_regular(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _inside(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a plain relative name; absolute paths and ``..`` would read
    files outside the dataset."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise SpruceError(f"{where}: file name {name[:60]!r} leaves the dataset folder "
                          f"{root}; names must be relative, without '..'")
    return root / rel


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: missing; expected {what}")
    return path


def class_folders(split_dir: Path, classes: list[str] | None = None
                  ) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of ``split_dir/<class>/*``; ``classes`` fixes the label order."""
    _need_dir(split_dir, "one folder per class holding its images")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise SpruceError(f"{split_dir}: no class folders; expected {split_dir}/<class>/<image>")
    classes = found if classes is None else classes
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise SpruceError(f"{split_dir}: class folder(s) {unknown[:3]} are not among the "
                         f"training classes; both splits need the same class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        if (split_dir / name).is_dir():
            imgs = _images_in(split_dir / name)
            files += imgs
            labels += [label] * len(imgs)
    if not files:
        raise SpruceError(f"{split_dir}: the class folders hold no .JPEG/.jpg/.png files")
    return files, labels, classes


def load_imagenet(path: str | Path, augment: bool = True, image_size: int = 224) -> DataSplits:
    root = _need_dir(Path(path), "an ImageNet folder with train/<class>/ and val/<class>/")
    train_files, train_labels, classes = class_folders(
        _need_dir(root / "train", "train/<class>/*.JPEG"))
    val_files, val_labels, _ = class_folders(
        _need_dir(root / "val", "val/<class>/*.JPEG (validation images in class folders)"),
        classes)
    train_tf = imagenet_train(image_size) if augment else imagenet_eval(image_size)
    return DataSplits("imagenet", ImageFiles(train_files, train_labels, train_tf),
                      ImageFiles(val_files, val_labels, imagenet_eval(image_size)),
                      num_classes=len(classes), task="image", zoo_dataset="imagenet",
                      source=str(root))


def _tiny_val(root: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann}: missing; Tiny-ImageNet labels its validation images "
                                "there (file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1 per line)")
    files, labels = [], []
    for n, line in enumerate(_text(ann).splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or cols[1] not in index:
            raise SpruceError(f"{ann}:{n}: expected 'file<TAB>wnid<TAB>box' with a wnid from "
                             f"wnids.txt; got {line[:60]!r}")
        img = _inside(root / "val" / "images", cols[0], f"{ann}:{n}")
        if not img.is_file():
            raise FileNotFoundError(f"{img}: listed in {ann}:{n} but missing")
        files.append(img)
        labels.append(index[cols[1]])
    return files, labels


def load_tiny_imagenet(path: str | Path, augment: bool = True) -> DataSplits:
    root = _need_dir(Path(path), "a Tiny-ImageNet folder (tiny-imagenet-200)")
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"{wnids_file}: missing; a Tiny-ImageNet folder holds wnids.txt, "
                                "train/<wnid>/images/ and val/images/ + val/val_annotations.txt")
    wnids = sorted({w.strip() for w in _text(wnids_file).split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for w in wnids:
        folder = _need_dir(_inside(root / "train", w, str(wnids_file)) / "images",
                           f"the training images of {w}")
        imgs = _images_in(folder)
        files += imgs
        labels += [index[w]] * len(imgs)
    val_files, val_labels = _tiny_val(root, index)
    train_tf = cifar_train(64, 8, IMAGENET_MEAN, IMAGENET_STD) if augment else \
        plain_eval(IMAGENET_MEAN, IMAGENET_STD)
    return DataSplits("tiny-imagenet", ImageFiles(files, labels, train_tf),
                      ImageFiles(val_files, val_labels, plain_eval(IMAGENET_MEAN, IMAGENET_STD)),
                      num_classes=len(wnids), task="image", zoo_dataset="tiny-imagenet",
                      source=str(root))
