"""Files written in the version-1 layout (by the former masked, compacted and converted
writers) still load, equal to the model they were saved from; their headers upgrade to
exactly what the current writer writes; and hostile version-1 headers are refused the
same way current ones are."""

import pytest
import torch
from torch import nn

import spruce
from spruce.errors import SpruceError
from spruce.fileformat import FORMAT_VERSION, upgrade
from tests.file_cases import CASES, build_case, pruned_tiny
from tests.hostile_files_kit import (
    example,
    fuzz_header,
    header_edit,
    header_of,
    rewrite,
    tiny,
)
from tests.old_format import save_v1


def _masks(model: nn.Module) -> dict:
    return {n: spruce.get_mask(layer) for n, layer in spruce.masked_layers(model).items()}


@pytest.mark.parametrize("case", CASES)
def test_a_version_1_file_loads_equal_to_its_model(case, tmp_path):
    model, kind, arch = build_case(case)
    path = save_v1(model, tmp_path / "old.safetensors", kind, extra={"model": "tiny"})
    assert "format_version" not in header_of(path)
    loaded = spruce.load(path, arch())
    x = example()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert _masks(loaded).keys() == _masks(model).keys()
    assert all(torch.equal(m, _masks(model)[n]) for n, m in _masks(loaded).items())
    assert {k: v.shape for k, v in loaded.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    if kind == "compacted":
        assert loaded.spruce_compaction.folded == model.spruce_compaction.folded


def _by_name(header: dict) -> dict:
    return {r["name"]: r for r in header["layers"]}


@pytest.mark.parametrize("case", CASES)
def test_a_version_1_header_upgrades_to_what_save_writes_now(case, tmp_path):
    model, kind, _ = build_case(case)
    old = header_of(save_v1(model, tmp_path / "old.safetensors", kind, {"model": "tiny"}))
    new = header_of(spruce.save(model, tmp_path / "new.safetensors", {"model": "tiny"}))
    up = upgrade(old, "old.safetensors")
    assert up["format_version"] == new["format_version"] == FORMAT_VERSION
    assert _by_name(up) == _by_name(new)
    skip = {"layers"} | ({"compaction_report"} if kind == "converted" else set())
    assert {k: v for k, v in up.items() if k not in skip} == \
        {k: v for k, v in new.items() if k not in skip}


OLD_FUZZED = ["masked:group", "compacted:group", "converted:groupwise", "converted:csr"]


@pytest.fixture(scope="module")
def old_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("old")
    out = {}
    for case in OLD_FUZZED:
        model, kind, _ = build_case(case)
        out[case] = save_v1(model, d / f"old_{case.replace(':', '_')}.safetensors", kind)
    return out


@pytest.mark.parametrize("case", OLD_FUZZED)
def test_mutated_version_1_headers_load_the_same_or_name_the_file(old_files, case):
    fuzz_header(old_files[case], f"mut_{old_files[case].name}")


@pytest.mark.parametrize("case,edit,field", [
    ("masked:group", header_edit(KeyError, "format"), "format_version"),
    ("masked:group", header_edit("pickle", "format"), "format"),
    ("masked:group", header_edit([1], "layers"), "layers"),
    ("masked:group", header_edit("group", "layers", "fc", "patterns"), "patterns"),
    ("compacted:group", header_edit([1], "compaction"), "compaction"),
    ("compacted:group", header_edit(KeyError, "compaction"), "compaction"),
    ("compacted:group", header_edit(KeyError, "compaction", "shapes"), "shapes"),
    ("compacted:group", header_edit([2.5, 3], "compaction", "shapes", "fc.weight"),
     "shapes.weight"),
    ("compacted:group", header_edit([10**12, 10**12], "compaction", "shapes", "fc.weight"),
     "shapes.weight"),
    ("compacted:group", header_edit(["fc"], "compaction", "folded"), "folded"),
    ("compacted:group", header_edit([0], "compaction", "folded"), "folded"),
    ("compacted:group", header_edit([1], "report"), "report"),
    ("converted:csr", header_edit(10**12, "layers", "conv", "nnz"), "nnz"),
    ("converted:csr", header_edit("fp16", "dtype"), "dtype"),
    ("converted:groupwise", header_edit({"fc": "conv"}, "aliases"), "aliases")])
def test_malformed_version_1_headers_name_file_and_field(old_files, tmp_path, case, edit,
                                                        field):
    header = header_of(old_files[case])
    edit(header)
    path = rewrite(old_files[case], tmp_path / "bad.safetensors", header=header)
    with pytest.raises(SpruceError, match=f"bad.safetensors: .*field '{field}'"):
        spruce.load(path, tiny())


def test_a_newer_format_version_asks_for_a_newer_spruce(tmp_path):
    model = pruned_tiny("group")
    path = spruce.save(model, tmp_path / "m.safetensors")
    header = {**header_of(path), "format_version": FORMAT_VERSION + 1}
    newer = rewrite(path, tmp_path / "newer.safetensors", header=header)
    with pytest.raises(SpruceError, match=f"newer.safetensors: field 'format_version': format "
                                          f"version {FORMAT_VERSION + 1} is newer .* upgrade"):
        spruce.load(newer, tiny())
