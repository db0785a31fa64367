"""A saved model is untrusted input, its header and its plan file first: whatever they
say, spruce loads the original's outputs or raises a SpruceError naming the file — it never
runs code, allocates what the header claims or returns wrong outputs."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import spruce
from spruce.cli import app
from spruce.errors import SpruceError
from tests.hostile_files_kit import (
    FAST,
    FUZZ,
    HOSTILE,
    example,
    fuzz_header,
    header_edit,
    header_of,
    header_paths,
    loads_same_or_names_file,
    mutate,
    record,
    rewrite,
    tiny,
)

# ``files``, one file of every format spruce writes: a fixture of tests/conftest.py


# ------------------------------------------------------------------ property: headers

SAFETENSORS_FORMATS = ["masked_group", "masked_element", "masked_block", "masked_channel",
                       "compacted", *(f"converted_{b}" for b in
                                      ("dense", "groupwise", "channel", "csr", "bsr"))]


@pytest.mark.parametrize("name", SAFETENSORS_FORMATS)
def test_mutated_headers_load_the_same_or_name_the_file(files, name):
    fuzz_header(files[name], f"mut_{name}.safetensors")


def test_mutated_plans_work_or_name_the_plan(files, tmp_path):
    data = json.loads(files["plan"].read_text())
    model = spruce.load(files["masked_group"], tiny())

    @FUZZ
    @given(path=st.sampled_from(header_paths(data)), value=st.sampled_from(HOSTILE))
    def check(path, value):
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps(mutate(data, path, value)))
        try:
            fast = spruce.convert(model, "auto", example_input=example(), plan=plan,
                                  timing=FAST)
        except SpruceError as e:
            assert str(plan) in str(e), str(e)
            return
        with torch.no_grad():
            torch.testing.assert_close(fast(example()), model(example()), rtol=1e-4,
                                       atol=1e-5)

    check()


# ------------------------------------------------------------------ code never runs

PAYLOAD = """
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("ran")
import torch
def f():
    return torch.nn.Linear(2, 2)
"""


@pytest.mark.parametrize("command", ["convert", "compact"])
def test_a_header_naming_a_py_file_never_runs_it(files, tmp_path, command):
    (tmp_path / "payload.py").write_text(PAYLOAD)
    header = {**header_of(files["masked_group"]), "model": f"{tmp_path / 'payload.py'}:f"}
    path = rewrite(files["masked_group"], tmp_path / "m.safetensors", header=header)
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, [command, str(path)])
    assert not (tmp_path / "MARKER").exists()
    assert res.exit_code == 2, res.output
    assert "never runs code" in res.output and "--model" in res.output


# ------------------------------------------------------------------ sizes before allocation

@pytest.mark.parametrize("name,layer,field,value", [
    ("converted_groupwise", "fc", "kept", 10**12), ("converted_csr", "conv", "nnz", 10**12),
    ("converted_bsr", "conv", "nnz_blocks", 10**12),
    ("converted_channel", "fc", "weight_shape", [10**6, 10**6])])
def test_header_sizes_are_checked_before_allocating(files, tmp_path, name, layer, field,
                                                    value):
    header = header_of(files[name])
    record(header, layer)["converted"][field] = value
    path = rewrite(files[name], tmp_path / "big.safetensors", header=header)
    with pytest.raises(SpruceError, match=f"big.safetensors: layer '{layer}': field "
                       f"'{field}'"):  # an 8 TB torch.zeros would be a RuntimeError
        spruce.load(path, tiny())


def test_compacted_shapes_are_checked_before_allocating(files, tmp_path):
    header = header_of(files["compacted"])
    record(header, "fc")["shapes"]["weight"] = [10**12, 10**12]
    path = rewrite(files["compacted"], tmp_path / "big.safetensors", header=header)
    with pytest.raises(SpruceError, match="big.safetensors: layer 'fc': field 'shapes.weight'"):
        spruce.load(path, tiny())


# ------------------------------------------------------------------ malformed headers


@pytest.mark.parametrize("name,raw,edit,field", [
    ("masked_group", "[1, 2]", None, None), ("masked_group", "null", None, None),
    ("masked_group", "{no", None, None),
    ("masked_group", None, header_edit({"fc": {}}, "layers"), "layers"),
    ("masked_group", None, header_edit([1], "layers"), None),
    ("masked_group", None, header_edit("group", "@fc", "mask", "patterns"), "patterns"),
    ("masked_group", None, header_edit(KeyError, "kind"), "kind"),
    ("masked_group", None, header_edit(KeyError, "format_version"), "format_version"),
    ("masked_group", None, header_edit("2", "format_version"), "format_version"),
    ("masked_group", None, header_edit("fc", "@head", "name"), "name"),
    ("masked_group", None, header_edit({"backend": "csr"}, "@fc", "converted"), "converted"),
    ("masked_group", None, header_edit(1, "@fc", "junk"), "junk"),
    ("masked_group", None, header_edit("fp32", "dtype"), "dtype"),
    ("converted_csr", None, header_edit([1], "layers"), None),
    ("converted_csr", None, header_edit(KeyError, "layers"), "layers"),
    ("converted_csr", None, header_edit(KeyError, "@*", "converted", "backend"), "backend"),
    ("converted_csr", None, header_edit(KeyError, "@conv", "converted", "shape"), "shape"),
    ("converted_csr", None, header_edit("os.system", "@conv", "converted", "index_dtype"),
     "index_dtype"),
    ("converted_csr", None, header_edit(-3, "@conv", "converted", "nnz"), "nnz"),
    ("converted_groupwise", None, header_edit(-1, "@fc", "converted", "kept"), "kept"),
    ("converted_csr", None, header_edit([0, 0], "@conv", "converted", "conv", "stride"), "stride"),
    ("converted_csr", None, header_edit([-5, -5], "@conv", "converted", "conv", "padding"),
     "padding"),
    ("converted_csr", None, header_edit("fp16", "dtype"), "dtype"),
    ("converted_csr", None, header_edit(KeyError, "dtype"), "dtype"),
    ("converted_csr", None, header_edit({"conv": "fc"}, "aliases"), "aliases"),
    ("converted_csr", None, header_edit({"patterns": []}, "@fc", "mask"), "mask"),
    ("compacted", None, header_edit([1], "@fc", "shapes"), "shapes"),
    ("compacted", None, header_edit({"weight": [2.5, 3]}, "@fc", "shapes"), "shapes.weight"),
    ("compacted", None, header_edit({"weight": [8, 128, 1]}, "@fc", "shapes"), "shapes.weight"),
    ("compacted", None, header_edit({"w.x": [8]}, "@fc", "shapes"), "shapes"),
    ("compacted", None, header_edit(True, "@fc", "folded"), "folded"),
    ("compacted", None, header_edit(False, "@fc", "folded"), "folded"),
    ("compacted", None, header_edit([1], "compaction_report"), "compaction_report"),
    ("converted_groupwise", None, header_edit("diagonal", "@fc", "converted", "layout"), "layout")])
def test_malformed_headers_are_a_spruce_error(files, tmp_path, name, raw, edit, field):
    header = header_of(files[name])
    if edit:
        edit(header)
    path = rewrite(files[name], tmp_path / "bad.safetensors", header=header, raw=raw)
    where = "bad.safetensors: .*" + (f"field '{field}'" if field else
                                      "(the spruce header|a layer record)")
    with pytest.raises(SpruceError, match=where):
        spruce.load(path, tiny())


# ------------------------------------------------------------------ plan files

def _choice(name):
    def edit(data):
        data["layers"]["fc"]["choice"] = name
        return data
    return edit


@pytest.mark.parametrize("edit,match", [
    (_choice("bsr"), "layer 'fc': field 'choice': chooses bsr, which cannot serve"),
    (_choice("os.system"), "layer 'fc': field 'choice'"),
    (lambda d: None, "must be a JSON object"),
    (lambda d: {**d, "model_ms": "fast"}, "field 'model_ms'"),
    (lambda d: {**d, "layers": [1]}, "field 'layers'")])
def test_bad_plans_name_the_plan_file(files, tmp_path, edit, match):
    plan = tmp_path / "edited.json"
    plan.write_text(json.dumps(edit(json.loads(files["plan"].read_text()))))
    model = spruce.load(files["masked_group"], tiny())
    with pytest.raises(SpruceError, match="edited.json: .*" + match):
        spruce.convert(model, "auto", example_input=example(), plan=plan, timing=FAST)


def test_a_plan_without_optional_fields_is_reused(files, tmp_path):
    data = json.loads(files["plan"].read_text())
    for choice in data["layers"].values():
        for key in ("reverted", "probed", "errors"):
            choice.pop(key)
    plan = tmp_path / "old.json"
    plan.write_text(json.dumps(data))
    model = spruce.load(files["masked_group"], tiny())
    fast = spruce.convert(model, "auto", example_input=example(), plan=plan, timing=FAST)
    assert {n: c.choice for n, c in fast.spruce_plan.layers.items()} == \
        {n: c["choice"] for n, c in data["layers"].items()}


@pytest.mark.parametrize("name", ["converted_csr", "converted_bsr"])
def test_a_linear_layer_without_its_optional_conv_field_loads(files, tmp_path, name):
    """``conv`` is optional for a linear layer: without it the file loads the same (it
    raised a KeyError while building the empty module)."""
    header = header_of(files[name])
    del record(header, "head")["converted"]["conv"]
    path = rewrite(files[name], tmp_path / "noconv.safetensors", header=header)
    assert loads_same_or_names_file(files[name], path) == "same"
