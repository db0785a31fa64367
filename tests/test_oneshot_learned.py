"""Learned masks started from one-shot masks; reconstruction after hardening; the file
says when kept weights changed."""

import json

import pytest
import torch
from torch import nn

import spruce
from spruce.criteria import reconstruct
from spruce.errors import SpruceError
from spruce.learned import LearnedSpec, attach_learned, harden, learned_layers
from spruce.masks import get_mask, original_weight


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


@pytest.mark.parametrize("init", ["wanda", "sparsegpt"])
def test_learned_starts_at_the_one_shot_mask(init):
    x = torch.randn(128, 16) * torch.logspace(-1, 1, 16)
    ref = net()
    spruce.prune(ref, "2:4", criterion=init, calibration=[x])
    model = net()
    before = [original_weight(m).detach().clone() for m in (model[0], model[2])]
    attach_learned(model, LearnedSpec(init=init), calibration=[x])
    for name, learned in learned_layers(model).items():
        assert torch.equal(learned.hard_mask().cpu(), get_mask(ref.get_submodule(name)))
    after = [original_weight(m).detach() for m in (model[0], model[2])]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="need calibration data"):
        spruce.learned.Learned(init=init).parametrization((4, 8), {"n": 2, "m": 4}, None, 0)


def test_reconstruction_after_harden_keeps_masks_and_lowers_error(tmp_path):
    x = torch.randn(256, 16) * torch.logspace(-1, 1, 16)
    dense = net()
    model = net()
    attach_learned(model, LearnedSpec(init="magnitude"))
    with pytest.raises(SpruceError, match="no spruce mask"):
        reconstruct(model, [x])
    masks = harden(model)
    err = float((model(x) - dense(x)).detach().norm())
    changed = reconstruct(model, [x[:128], x[128:]])
    assert changed == ["0", "2"]
    for name, m in masks.items():
        assert torch.equal(get_mask(model.get_submodule(name)), m)
    assert float((model(x) - dense(x)).norm()) < 0.9 * err
    path = spruce.save(model, tmp_path / "m.safetensors")
    header = spruce.io.read_header(path)
    records = {r["name"]: r for r in header["layers"]}
    assert all(records[n]["mask"]["weights_changed"] is True for n in ("0", "2"))
    again = net()
    spruce.load(path, again)
    torch.testing.assert_close(again(x), model(x))


def test_header_weights_changed_must_be_a_bool(tmp_path):
    model = net()
    spruce.prune(model, "2:4", criterion="sparsegpt", calibration=[torch.randn(64, 16)])
    path = spruce.save(model, tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    header = json.loads(meta["spruce"])
    first = next(r for r in header["layers"] if r["name"] == "0")
    assert first["mask"]["weights_changed"] is True
    assert first["mask"]["criterion"]["name"] == "sparsegpt"
    first["mask"]["weights_changed"] = "yes"
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"spruce": json.dumps(header)})
    with pytest.raises(SpruceError, match="weights_changed"):
        spruce.load(tmp_path / "bad.safetensors", net())


def test_coupled_channels_with_sparsegpt_refit_the_consumers():
    x = torch.randn(64, 16)
    dense = net()
    errs = {}
    for crit in ("wanda", "sparsegpt"):
        model = net()
        report = spruce.prune(model, "channel", 0.5, scope="coupled", example_input=x[:2],
                              criterion=crit, calibration=[x])
        errs[crit] = float((model(x) - dense(x)).norm())
        # the consumer of the removed channels is refit to the dense outputs (the producer,
        # whose rows are whole, may be refit too: its kept rows are fitted the same way)
        assert ("2" in report.changed) == (crit == "sparsegpt")
    assert errs["sparsegpt"] < errs["wanda"]


def test_reconstruction_with_dense_targets_fits_the_unmasked_model():
    x = torch.randn(256, 16) * torch.logspace(-1, 1, 16)
    dense = net()
    errs = {}
    for targets in ("pruned", "dense"):
        model = net()
        spruce.prune(model, "2:4")
        before = float((model(x) - dense(x)).detach().norm())
        reconstruct(model, [x], targets=targets)
        errs[targets] = float((model(x) - dense(x)).detach().norm())
        assert errs[targets] < before
    assert errs["dense"] < errs["pruned"], errs
