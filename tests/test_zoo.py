"""Tests for spruce.zoo: exact sizes, forward shapes, errors, seeded init."""

import dataclasses
import sys

import pytest
import torch

from spruce import zoo

IMAGE_MODELS = ["vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "shufflenet_v2", "vit"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(name: str, dataset: str | None = None, **kwargs) -> torch.nn.Module:
    """Build without allocating memory: parameter counts only."""
    with torch.device("meta"):
        return zoo.build(name, dataset, **kwargs)


# reference counts: torchvision models (vit = vit_b_16) and HF bert-base-uncased
@pytest.mark.parametrize("name, kwargs, expected", [
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("vgg16", {"batch_norm": True}, 138_365_992),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("shufflenet_v2", {}, 2_278_604),
    ("shufflenet_v2", {"width": 0.5}, 1_366_792),
    ("shufflenet_v2", {"width": 2.0}, 7_393_996),
    ("vit", {}, 86_567_656),
])
def test_imagenet_param_counts(name, kwargs, expected):
    model = build_meta(name, "imagenet", **kwargs)
    assert next(model.parameters()).is_meta
    assert n_params(model) == expected


def test_bert_param_count():
    pytest.importorskip("transformers")
    model = build_meta("bert_base", "qqp")
    assert n_params(model.bert) == 109_482_240          # BertModel incl. pooler
    assert n_params(model) == 109_482_240 + 768 * 2 + 2  # + 2-class head


def test_registry_lists():
    assert zoo.names() == sorted(IMAGE_MODELS + ["bert_base"])
    assert zoo.datasets() == ["cifar10", "tiny-imagenet", "imagenet", "qqp"]
    geometry = {k: (d.image_size, d.num_classes) for k, d in zoo.DATASETS.items()}
    assert geometry["cifar10"] == (32, 10)
    assert geometry["tiny-imagenet"] == (64, 200)
    assert geometry["imagenet"] == (224, 1000)
    cifar = zoo.DATASETS["cifar10"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cifar.num_classes = 100


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_cifar_forward(name):
    model = zoo.build(name, "cifar10", seed=0).eval()
    x = zoo.example_input(name, "cifar10", batch=2)
    assert x.shape == (2, 3, 32, 32) and x.abs().sum() > 0
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all() and y.abs().sum() > 0


def test_tiny_imagenet_forward():
    model = zoo.build("resnet18", "tiny-imagenet", seed=0).eval()
    x = zoo.example_input("resnet18", "tiny-imagenet", batch=2)
    assert x.shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 200)


def test_imagenet_forward_resnet18():
    model = zoo.build("resnet18", seed=0).eval()
    x = zoo.example_input("resnet18", batch=1)
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_small_variants_architecture():
    r = zoo.build("resnet18", "cifar10")
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1)
    assert isinstance(r.maxpool, torch.nn.Identity)
    assert zoo.build("resnet18").conv1.kernel_size == (7, 7)
    v = zoo.build("vgg16", "cifar10")
    linears = [m for m in v.classifier if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [512, 512, 10]
    vit = zoo.build("vit", "tiny-imagenet", depth=2)
    assert vit.cfg.patch_size == 8 and len(vit.layers) == 2
    assert isinstance(vit.layers[0].self_attention.qkv, torch.nn.Linear)


def test_num_classes_override():
    assert zoo.build("resnet18", "cifar10", num_classes=100).fc.out_features == 100


def test_bert_forward():
    pytest.importorskip("transformers")
    model = zoo.build("bert_base", "qqp", seed=0, num_hidden_layers=2).eval()
    batch = zoo.example_input("bert_base", "qqp", batch=2)
    assert batch["input_ids"].shape == (2, 128) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].eq(1).all()
    assert zoo.example_input("bert_base", batch=1, seq_len=16)["input_ids"].shape == (1, 16)
    with torch.no_grad():
        logits = model(**batch).logits
        assert logits.shape == (2, 2)
        assert torch.allclose(model(batch["input_ids"]).logits, logits)


def test_unknown_model_name():
    with pytest.raises(ValueError) as err:
        zoo.build("resnet1000")
    for name in zoo.names():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="resnet18"):
        zoo.example_input("nope")


def test_unknown_dataset():
    with pytest.raises(ValueError) as err:
        zoo.build("resnet18", "mnist")
    for ds in zoo.datasets():
        assert ds in str(err.value)


def test_modality_mismatch():
    with pytest.raises(ValueError, match="text"):
        zoo.build("resnet18", "qqp")
    with pytest.raises(ValueError, match="image"):
        zoo.build("bert_base", "cifar10")  # rejected before transformers is imported


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_seed_determinism(name):
    a = zoo.build(name, "cifar10", seed=123)
    b = zoo.build(name, "cifar10", seed=123)
    c = zoo.build(name, "cifar10", seed=124)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_seed_leaves_global_rng_alone():
    before = torch.get_rng_state()
    zoo.build("resnet18", "cifar10", seed=7)
    assert torch.equal(before, torch.get_rng_state())


def test_example_input_is_seeded():
    x1, x1_again, x2 = (zoo.example_input("vit", "cifar10", seed=s) for s in (1, 1, 2))
    assert torch.equal(x1, x1_again)
    assert not torch.equal(x1, x2)


def test_bert_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails
    with pytest.raises(ImportError, match=r"\[hf\] extra"):
        zoo.build("bert_base")
