"""Every kind of saved model round-trips through spruce.save / spruce.load: outputs,
masks, shapes and compaction reports equal; kinds come from one registry that matches the
header schema."""

import pytest
import torch
from torch import nn

import spruce
from spruce import io
from spruce.fileformat import KINDS
from tests.file_cases import CASES, CASES_SINCE_V2, build_case
from tests.hostile_files_kit import example, header_of


def _masks(model: nn.Module) -> dict:
    return {n: spruce.get_mask(layer) for n, layer in spruce.masked_layers(model).items()}


@pytest.mark.parametrize("case", CASES + CASES_SINCE_V2)
def test_every_kind_round_trips(case, tmp_path):
    model, kind, arch = build_case(case)
    path = spruce.save(model, tmp_path / "m.safetensors", extra={"model": "tiny"})
    header = header_of(path)
    assert header["kind"] == kind and header["model"] == "tiny"
    loaded = spruce.load(path, arch())
    x = example()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    masks = _masks(model)
    assert _masks(loaded).keys() == masks.keys()
    assert all(torch.equal(m, masks[n]) for n, m in _masks(loaded).items())
    assert {k: v.shape for k, v in loaded.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    if hasattr(model, "spruce_compaction"):
        assert loaded.spruce_compaction.to_dict() == model.spruce_compaction.to_dict()
    again = spruce.save(loaded, tmp_path / "again.safetensors", extra={"model": "tiny"})
    assert header_of(again)["layers"] == header["layers"]  # saving what was loaded: same


def test_the_kind_registry_matches_the_schema():
    assert set(io._KINDS) == set(KINDS)
    ranks = [k.rank for k in io._KINDS.values()]
    assert len(set(ranks)) == len(ranks)  # save() never has to choose between equals


def test_extra_notes_cannot_overwrite_header_fields(tmp_path):
    model, _, _ = build_case("masked:group")
    for key in ("layers", "kind", "format_version", "dtype"):
        with pytest.raises(ValueError, match=f"extra may not set {key}"):
            spruce.save(model, tmp_path / "m.safetensors", extra={key: 1})
    assert not (tmp_path / "m.safetensors").exists()


class Shared(nn.Module):
    """One Linear registered under two names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 16)
        self.b = self.a
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.b(torch.relu(self.a(x))))


def test_a_converted_layer_under_two_names_round_trips(tmp_path):
    model = Shared()
    spruce.prune(model, "group", 0.5)
    x = torch.randn(3, 16)
    fast = spruce.convert(model, "groupwise", example_input=x)
    path = spruce.save(fast, tmp_path / "shared.safetensors")
    assert header_of(path)["aliases"] == {"a": ["b"]}
    loaded = spruce.load(path, Shared())
    assert loaded.a is loaded.b
    assert torch.equal(loaded(x), fast(x))
