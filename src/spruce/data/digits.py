"""The built-in real dataset: scikit-learn's ``load_digits`` (bundled with the package,
nothing is downloaded).

1,797 handwritten digits, 8×8 grayscale with values 0..16, 10 classes. To feed CNNs sized
for CIFAR-10 (the zoo's ``cifar10`` variants and :class:`spruce.train.TinyCNN`) each image
is scaled to 0..1, upsampled bilinearly to ``image_size × image_size`` (32 by default) and
repeated to 3 channels, then standardised with the mean and standard deviation of the
training split. The split is fixed, whatever the training seed: a permutation seeded with
0, the first 80% (rounded down: 1,437 images) for training, the other 360 for testing. No
augmentation (the digits are centred and upright).

``npz``: read the same 1,797 images from an ``.npz`` with arrays ``images`` [1797, 8, 8]
and ``target`` [1797] instead of scikit-learn (for machines without it); make one where
scikit-learn is installed with ``python -c "import numpy as np; from sklearn.datasets
import load_digits as l; d = l(); np.savez_compressed('digits.npz', images=d.images,
target=d.target)"``. The split and the standardisation are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SpruceError
from .base import DataSplits, TensorImages

SPLIT_SEED = 0
TRAIN_FRACTION = 0.8


def load_digits(image_size: int = 32, channels: int = 3, npz: str | None = None) -> DataSplits:
    images, target, source = _read(npz)
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False)
    x = x.repeat(1, channels, 1, 1)  # [N, C, S, S]
    y = torch.tensor(target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = int(TRAIN_FRACTION * len(y))  # 1,437
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return DataSplits("digits", TensorImages(x[train], y[train]), TensorImages(x[test], y[test]),
                      num_classes=10, task="image", zoo_dataset="cifar10",
                      source=source,
                      notes=[f"8x8 digits upsampled to {image_size}x{image_size}, "
                             f"{channels} channels"])


def _read(npz: str | None):
    """(images [N, 8, 8], target [N], source) from scikit-learn or an .npz file."""
    if npz is not None:
        import numpy as np

        with np.load(npz) as f:
            missing = {"images", "target"} - set(f.files)
            if missing:
                raise SpruceError(f"{npz}: digits .npz needs arrays 'images' [N, 8, 8] and "
                                 f"'target' [N]; missing {sorted(missing)}")
            return f["images"], f["target"], str(npz)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("the built-in 'digits' dataset comes from scikit-learn: "
                          "pip install scikit-learn==1.9.1, or pass an .npz of it "
                          "(npz=..., see spruce.data.digits)") from None
    raw = sk_load_digits()
    return raw.images, raw.target, "sklearn.datasets.load_digits"
