"""Pieces of the CNN learned-mask benchmark: digits from an .npz, frozen BatchNorm,
the layers a 2:4 run cannot cover."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spruce import data, zoo

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "learned_cnn_bench", ROOT / "benchmarks" / "learned_masks" / "cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_from_npz_equal_the_scikit_learn_ones(tmp_path):
    sk = pytest.importorskip("sklearn.datasets")
    raw = sk.load_digits()
    path = tmp_path / "digits.npz"
    np.savez_compressed(path, images=raw.images, target=raw.target)
    a = data.load("digits", image_size=16)
    b = data.load("digits", image_size=16, npz=str(path))
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.test.labels, b.test.labels)
    assert b.source == str(path)
    np.savez_compressed(tmp_path / "bad.npz", images=raw.images)
    with pytest.raises(ValueError, match="target"):
        data.load("digits", npz=str(tmp_path / "bad.npz"))


def test_frozen_batchnorm_is_the_eval_function_in_train_mode():
    bench = _bench()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 6)
    ref = model.eval()(x)
    assert bench.freeze_batchnorm(model) == 1
    model.train().requires_grad_(False)
    assert torch.allclose(model(x), ref, atol=1e-6)
    assert not [p for p in model.parameters() if p.requires_grad]


def test_only_the_resnet_stem_cannot_hold_2_4_runs():
    bench = _bench()
    model = zoo.build("resnet18", "cifar10", seed=0, num_classes=10)
    assert list(bench.unprunable(model)) == ["conv1"]
