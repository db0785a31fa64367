"""save → load round trips and the errors of load."""

import copy
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import spruce
from spruce.io import MASK_SUFFIX, read_header
from tests.conftest import SmallNet


@pytest.mark.parametrize("pattern,density", [("element", 0.3), ("2:4", None), ("group", 0.5),
                                             ("channel", 0.5), ("block", 0.5)])
def test_round_trip_identical_outputs(pattern, density, small_net, small_input, tmp_path):
    fresh = copy.deepcopy(small_net)
    spruce.prune(small_net, pattern, density, block=(2, 2)) if pattern == "block" else \
        spruce.prune(small_net, pattern, density)
    path = spruce.save(small_net, tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
    header = read_header(path)
    assert header["kind"] == "masked" and header["version"] == spruce.__version__
    assert header["format_version"] == spruce.fileformat.FORMAT_VERSION
    fc1 = next(r for r in header["layers"] if r["name"] == "fc1")
    assert fc1["mask"]["patterns"][0]["name"] == ("vector" if ":" in pattern else pattern)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # make sure the weights really come from the file
    spruce.load(path, fresh)
    assert torch.equal(fresh(small_input), small_net(small_input))
    assert fresh.fc1.parametrizations.weight[0].info["patterns"] == \
        small_net.fc1.parametrizations.weight[0].info["patterns"]


def test_load_rejects_broken_pattern(small_net, tmp_path):
    spruce.prune(small_net, "group", 0.5)
    path = spruce.save(small_net, tmp_path / "m.safetensors")
    tensors = load_file(path)
    key = "fc1" + MASK_SUFFIX
    keep = tensors[key][0].nonzero()[0]
    tensors[key][0, keep] = False  # break one column
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    target = copy.deepcopy(small_net)
    spruce.bake(target)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match="layer 'fc1'.*mask breaks its declared pattern group"):
        spruce.load(path, target)
    assert spruce.masked_layers(target) == {}
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_load_rejects_other_model(small_net, tmp_path):
    spruce.prune(small_net, "element", 0.5)
    path = spruce.save(small_net, tmp_path / "m.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="does not have"):
        spruce.load(path, other)
    wider = SmallNet()
    wider.fc2 = torch.nn.Linear(32, 12)
    with pytest.raises(ValueError, match="layer 'fc2': mask shape"):
        spruce.load(path, wider)


def test_load_errors_on_missing_or_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        spruce.load(tmp_path / "none.safetensors", torch.nn.Linear(2, 2))
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="without a spruce header"):
        spruce.load(tmp_path / "plain.safetensors", torch.nn.Linear(2, 2))
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="not a safetensors file"):
        spruce.load(tmp_path / "junk.safetensors", torch.nn.Linear(2, 2))
