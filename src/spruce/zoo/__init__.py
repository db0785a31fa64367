"""spruce.zoo: reference models written in plain PyTorch, randomly initialised.

    from spruce import zoo
    model = zoo.build("resnet18", "cifar10", seed=0)   # nn.Module
    x = zoo.example_input("resnet18", "cifar10", batch=2)
    logits = model(x)                                  # [2, 10]

Models: vgg16, vgg19, resnet18, resnet34, resnet50, shufflenet_v2, vit
(image datasets cifar10, tiny-imagenet, imagenet) and bert_base (text dataset
qqp; needs the optional ``transformers`` dependency). Each model file documents
how its small-image variant differs from the ImageNet one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

# importing the model modules fills REGISTRY through their @register decorators
from . import bert, resnet, shufflenet, vgg, vit  # noqa: F401
from .registry import DATASETS, DEFAULT_DATASET, REGISTRY, Dataset, register

__all__ = ["DATASETS", "Dataset", "build", "datasets", "example_input", "from_file", "names",
           "register"]


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(REGISTRY)


def datasets() -> list[str]:
    """All known dataset names, in table order."""
    return list(DATASETS)


def _resolve(name: str, dataset: str | None) -> Dataset:
    """Validate (model, dataset) and return the dataset record."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    modality = REGISTRY[name].modality
    dataset = DEFAULT_DATASET[modality] if dataset is None else dataset
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(datasets())}")
    ds = DATASETS[dataset]
    if ds.modality != modality:
        valid = [d.name for d in DATASETS.values() if d.modality == modality]
        raise ValueError(f"{name} is a {modality} model but dataset {dataset!r} is {ds.modality}; "
                         f"valid datasets for {name}: {', '.join(valid)}")
    return ds


def build(name: str, dataset: str | None = None, *, seed: int | None = None,
          **kwargs) -> nn.Module:
    """Build model ``name`` sized for ``dataset`` (default: imagenet, or qqp for text).

    ``seed`` makes the initialisation reproducible without touching the global
    RNG. ``num_classes`` overrides the dataset's label count; other kwargs go to
    the model's builder. Works under ``with torch.device("meta"):``.
    """
    ds = _resolve(name, dataset)
    num_classes = kwargs.pop("num_classes", ds.num_classes)
    builder = REGISTRY[name].builder
    if seed is None:
        return builder(ds, num_classes, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(ds, num_classes, **kwargs)


def example_input(name: str, dataset: str | None = None, batch: int = 1, seed: int = 0,
                  seq_len: int | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """A random input batch for ``build(name, dataset)`` (CPU).

    Images: ``[batch, 3, H, W]`` standard normal. Text: ``{"input_ids": [batch, seq_len],
    "attention_mask": ones}``, with ids drawn from the BERT vocabulary (seq_len
    defaults to the dataset's, 128 for qqp).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch (--batch) must be an integer >= 1; got {batch!r}")
    ds = _resolve(name, dataset)
    g = torch.Generator().manual_seed(seed)
    if ds.modality == "image":
        return torch.randn(batch, ds.channels, ds.image_size, ds.image_size, generator=g)
    seq_len = ds.seq_len if seq_len is None else seq_len
    input_ids = torch.randint(1000, 30522, (batch, seq_len), generator=g)  # skip special ids
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def from_file(spec: str) -> nn.Module:
    """``path/to/file.py:factory`` → the ``nn.Module`` that ``factory()`` returns.

    This runs the file's code: call it only with a spec the user typed, never with one read
    from a saved model's header (``spruce.cli.common.model_of_file`` refuses those)."""
    file, _, factory = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"model file {file!r} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"spruce_user_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    mod_spec.loader.exec_module(module)
    if not hasattr(module, factory):
        raise ValueError(f"{file} has no {factory!r}; write FILE.py:FUNCTION returning a module")
    model = getattr(module, factory)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model
