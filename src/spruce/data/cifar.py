"""CIFAR-10 in its standard python-pickle batch format (``cifar-10-python.tar.gz``,
extracted): a folder ``cifar-10-batches-py`` holding ``data_batch_1`` … ``data_batch_5``,
``test_batch`` and ``batches.meta``.

Each batch is a pickled dict with ``data`` (uint8 ``[N, 3072]``: the red, green and blue
32×32 planes of each image, row-major) and ``labels`` (N ints in 0..9); the keys are
bytes in the original Python 2 files. Pickles can run code, so they are read with an
unpickler that only builds dicts, lists, strings, bytes, numbers and numpy arrays.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SpruceError
from .base import DataSplits, TensorImages
from .transforms import cifar_train, plain_eval

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
ROW = 3 * 32 * 32

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
            ("numpy.core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds "
                                     "only a dict of arrays and lists)")


def find_root(path: Path) -> Path:
    """``path`` itself or its ``cifar-10-batches-py`` subfolder, whichever has the batches."""
    for root in (path, path / FOLDER):
        if (root / TRAIN_FILES[0]).is_file() or (root / TEST_FILE).is_file():
            return root
    raise FileNotFoundError(
        f"{path}: no CIFAR-10 batches here; expected data_batch_1..5 and test_batch (the "
        f"python version, cifar-10-python.tar.gz extracted) in {path} or {path / FOLDER}")


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) from one pickled batch."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; a CIFAR-10 folder holds data_batch_1..5 "
                                "and test_batch")
    try:
        with open(file, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise SpruceError(f"{file}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict):
        raise SpruceError(f"{file}: holds a {type(d).__name__}; expected a dict with 'data' "
                         "and 'labels'")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW \
            or data.dtype != np.uint8:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else repr(type(data))
        raise SpruceError(f"{file}: 'data' is {got}; expected uint8 rows of {ROW} values "
                         "(3 planes of 32x32)")
    labels = _labels(file, labels, data.shape[0])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise SpruceError(f"{file}: labels must be 0..9; found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _labels(file: Path, labels: Any, n: int) -> np.ndarray:
    """``labels`` as int64 ``[n]``, checked for size and type before anything is built:
    a list of lists (or a list sharing itself) would otherwise expand without bound."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise SpruceError(f"{file}: 'labels' is a {labels.dtype} array of shape "
                              f"{labels.shape}; expected {n} integers")
    elif isinstance(labels, (list, tuple)):
        if len(labels) == n and not all(map(_is_int, labels)):
            bad = next(v for v in labels if not _is_int(v))
            raise SpruceError(f"{file}: 'labels' holds a {type(bad).__name__}; expected "
                              f"{n} integers 0..9")
    else:
        raise SpruceError(f"{file}: 'labels' is {type(labels).__name__}; expected a list of "
                          f"{n} integers 0..9")
    if len(labels) != n:
        raise SpruceError(f"{file}: {len(labels)} labels for {n} images")
    return np.asarray(labels, dtype=np.int64)


def _read_all(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(f) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


def load_cifar10(path: str | Path, augment: bool = True) -> DataSplits:
    root = find_root(Path(path))
    x_train, y_train = _read_all([root / f for f in TRAIN_FILES])
    x_test, y_test = _read_all([root / TEST_FILE])
    train_tf = cifar_train() if augment else plain_eval()
    return DataSplits("cifar10", TensorImages(x_train, y_train, train_tf),
                      TensorImages(x_test, y_test, plain_eval()), num_classes=10,
                      task="image", zoo_dataset="cifar10", source=str(root))
