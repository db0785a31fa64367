"""A saved model is untrusted input: every file spruce reads either loads with the
original's outputs or raises a SpruceError naming the file — never runs code, crashes,
allocates what the header claims or returns wrong outputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

import spruce
from spruce.cli import app
from spruce.errors import SpruceError
from spruce.io import atomic_write
from tests.hostile_files_kit import (
    FAST,
    CRASHERS,
    FUZZ,
    HOSTILE,
    example,
    header_of,
    header_paths,
    loads_same_or_names_file,
    make_files,
    mutate,
    record,
    rewrite,
    tiny,
)

ROOT = Path(__file__).resolve().parents[1]
MASK = "fc.parametrizations.weight.0.mask"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("hostile"))


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


# ------------------------------------------------------------------ property: headers

SAFETENSORS_FORMATS = ["masked_group", "masked_element", "masked_block", "masked_channel",
                       "compacted", *(f"converted_{b}" for b in
                                      ("dense", "groupwise", "channel", "csr", "bsr"))]


@pytest.mark.parametrize("name", SAFETENSORS_FORMATS)
def test_mutated_headers_load_the_same_or_name_the_file(files, name):
    original = files[name]
    header = header_of(original)
    paths = header_paths(header)

    @FUZZ
    @given(path=st.sampled_from(paths), value=st.sampled_from(HOSTILE))
    def check(path, value):
        mutated = rewrite(original, original.with_name(f"mut_{name}.safetensors"),
                          header=mutate(header, path, value))
        loads_same_or_names_file(original, mutated)

    check()


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


# ------------------------------------------------------------------ property: index tensors

FUZZED = [f"converted_{b}.safetensors" for b in ("csr", "bsr", "groupwise", "channel")]


@pytest.fixture(scope="module")
def tampered(files):
    """One child process loads every file with tampered index tensors: a crash in a sparse
    kernel fails the tests below instead of killing pytest. Its JSON lines."""
    p = subprocess.run([sys.executable, "-m", "tests.hostile_files_kit",
                        str(files["plan"].parent), *FUZZED], cwd=ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, \
        f"child exited {p.returncode} after:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_tampered_index_tensors_never_crash(tampered):
    """Hypothesis over crow/col/kept indices of every converted file (``fuzz_indices``)."""
    seen = {r["fuzz"]: r["seen"] for r in tampered if "fuzz" in r}
    assert list(seen) == FUZZED
    assert all(s["error"] > 0 for s in seen.values()), seen  # the tampering was caught


def test_tampered_indices_are_a_clear_error(tampered):
    """The tamperings that crashed (SIGSEGV) or returned garbage before: each is a
    SpruceError naming the file, the layer and the tensor."""
    results = [r for r in tampered if "result" in r]
    assert [tuple(r["case"]) for r in results] == CRASHERS
    for r in results:
        backend, key, how = r["case"]
        layer, tensor = key.split(".")
        assert f"tampered_{backend}_{how}.safetensors: layer '{layer}'" in r["result"], r
        assert tensor.split("_")[0] in r["result"], r


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


# ------------------------------------------------------------------ bare layers, killed saves

@pytest.mark.parametrize("make,pattern,x", [
    (lambda: nn.Linear(16, 8), "group", torch.randn(3, 16)),
    (lambda: nn.Conv2d(4, 8, 3), "channel", torch.randn(1, 4, 5, 5))])
def test_a_pruned_bare_layer_saves_and_loads(tmp_path, make, pattern, x):
    layer = make()
    spruce.prune(layer, pattern, 0.5)
    path = spruce.save(layer, tmp_path / "layer.safetensors")
    fresh = spruce.load(path, make())
    assert torch.equal(fresh(x), layer(x))
    assert torch.equal(spruce.get_mask(fresh), spruce.get_mask(layer))


KILLED_SAVE = """
import os, signal, sys
from spruce.io import atomic_write
def write(tmp):
    open(tmp, "wb").write(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def test_a_killed_save_leaves_nothing_after_the_next_save(tmp_path):
    target = tmp_path / "m.safetensors"
    p = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)], cwd=ROOT,
                         env=child_env())
    assert p.wait() == -signal.SIGKILL
    left = list(tmp_path.iterdir())  # the killed save's folder, with its half file
    assert len(left) == 1 and left[0].name.startswith(f".m.safetensors.{p.pid}.")
    assert (left[0] / "m.safetensors").read_bytes() == b"half a file"
    live = tmp_path / f".m.safetensors.{os.getpid()}.busy.tmp"  # a save in progress here
    live.mkdir()
    spruce.save(nn.Linear(2, 2), target)
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([live.name, target.name])


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("new, half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["t.txt"]


# ------------------------------------------------------------------ masks

def _broken(mask):
    m = mask.clone()
    m[0, :], m[1, :] = True, False
    return m


def _edit_masked(files, tmp_path, header_fn=None, tensor_fn=None):
    src = files["masked_group"]
    header, tensors = header_of(src), load_file(str(src))
    if header_fn:
        header_fn(header)
    if tensor_fn:
        tensor_fn(tensors)
    return rewrite(src, tmp_path / "mut.safetensors", header=header, tensors=tensors)


def _patterns(n):
    def fn(h):
        mask = record(h, "fc")["mask"]
        mask["patterns"] = mask["patterns"][:1] * n
    return fn


def _set_mask(fn):
    def edit(t):
        t[MASK] = fn(t[MASK])
    return edit


def _nan_where_pruned(m):
    out = m.float()
    out[~m] = float("nan")
    return out


def _nan_weight(t):
    t["fc.parametrizations.weight.original"][0, 0] = float("nan")


@pytest.mark.parametrize("header_fn,tensor_fn,match", [
    (_patterns(0), _set_mask(_broken), "field 'patterns': the mask prunes entries"),
    (_patterns(2), _set_mask(_broken), "field 'patterns': mask breaks its declared pattern"),
    (None, _set_mask(lambda m: m.float() * 0.3), "field 'mask'.*other than 0 and 1"),
    (None, _set_mask(_nan_where_pruned), "field 'mask'.*other than 0 and 1"),
    (None, _nan_weight, "NaN/inf")])
def test_masks_and_weights_are_checked(files, tmp_path, header_fn, tensor_fn, match):
    path = _edit_masked(files, tmp_path, header_fn, tensor_fn)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpruceError, match="mut.safetensors: .*" + match):
        spruce.load(path, model)
    assert not spruce.masked_layers(model)  # nothing changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_exact_float_masks_and_no_pattern_all_kept_load(files, tmp_path):
    def all_kept_no_pattern(t):
        t["head.parametrizations.weight.0.mask"] = torch.ones_like(
            t["head.parametrizations.weight.0.mask"])

    def no_pattern(h):
        record(h, "head")["mask"]["patterns"] = []
    path = _edit_masked(files, tmp_path, no_pattern, lambda t: (
        all_kept_no_pattern(t), t.__setitem__(MASK, t[MASK].float())))
    model = spruce.load(path, tiny())
    assert spruce.get_mask(model.fc).dtype == torch.bool
    assert torch.equal(spruce.get_mask(model.fc), load_file(str(files["masked_group"]))[MASK])


def test_several_patterns_check_what_survives_intersection(tmp_path):
    model = tiny()
    spruce.prune(model, "group", 0.5)
    spruce.prune(model, "2:4")  # group ∩ 2:4: still 2:4, no longer whole groups
    path = spruce.save(model, tmp_path / "two.safetensors")
    loaded = spruce.load(path, tiny())
    assert torch.equal(loaded(example()), model(example()))
    header, tensors = header_of(path), load_file(str(path))
    tensors[MASK] = torch.ones_like(tensors[MASK])  # breaks 2:4
    with pytest.raises(SpruceError, match="layer 'fc'.*declared pattern vector"):
        spruce.load(rewrite(path, tmp_path / "bad.safetensors", header, tensors), tiny())


def test_a_mask_on_a_layer_that_is_not_prunable(tmp_path):
    def net():
        return nn.Sequential(nn.Linear(8, 8), nn.GroupNorm(2, 8))
    model = net()
    spruce.prune(model, "element", 0.5)
    path = spruce.save(model, tmp_path / "gn.safetensors")
    header, tensors = header_of(path), load_file(str(path))
    tensors["1.parametrizations.weight.original"] = tensors.pop("1.weight")
    tensors["1.parametrizations.weight.0.mask"] = torch.tensor([True, False] * 4)
    header["layers"].append({"name": "1", "mask": {"patterns": [{"name": "element"}]}})
    bad = rewrite(path, tmp_path / "bad.safetensors", header, tensors)
    with pytest.raises(SpruceError, match="bad.safetensors: layer '1'.*GroupNorm.*not a "
                                          "prunable layer"):
        spruce.load(bad, net())


# ------------------------------------------------------------------ malformed headers

def _put(value, *path):
    """Set (or, for KeyError, delete) ``path`` in a header; ``"@fc"`` steps into the layer
    record named fc, ``"@*"`` into the first record, ``"*"`` into an object's first value."""
    def fn(h):
        obj = h
        for k in path[:-1]:
            obj = record(obj, k[1:]) if k.startswith("@") else \
                next(iter(obj.values())) if k == "*" else obj[k]
        if value is KeyError:
            obj.pop(path[-1])
        else:
            obj[path[-1]] = value
    return fn


@pytest.mark.parametrize("name,raw,edit,field", [
    ("masked_group", "[1, 2]", None, None), ("masked_group", "null", None, None),
    ("masked_group", "{no", None, None),
    ("masked_group", None, _put({"fc": {}}, "layers"), "layers"),
    ("masked_group", None, _put([1], "layers"), None),
    ("masked_group", None, _put("group", "@fc", "mask", "patterns"), "patterns"),
    ("masked_group", None, _put(KeyError, "kind"), "kind"),
    ("masked_group", None, _put(KeyError, "format_version"), "format_version"),
    ("masked_group", None, _put("2", "format_version"), "format_version"),
    ("masked_group", None, _put("fc", "@head", "name"), "name"),
    ("masked_group", None, _put({"backend": "csr"}, "@fc", "converted"), "converted"),
    ("masked_group", None, _put(1, "@fc", "junk"), "junk"),
    ("masked_group", None, _put("fp32", "dtype"), "dtype"),
    ("converted_csr", None, _put([1], "layers"), None),
    ("converted_csr", None, _put(KeyError, "layers"), "layers"),
    ("converted_csr", None, _put(KeyError, "@*", "converted", "backend"), "backend"),
    ("converted_csr", None, _put(KeyError, "@conv", "converted", "shape"), "shape"),
    ("converted_csr", None, _put("os.system", "@conv", "converted", "index_dtype"),
     "index_dtype"),
    ("converted_csr", None, _put(-3, "@conv", "converted", "nnz"), "nnz"),
    ("converted_groupwise", None, _put(-1, "@fc", "converted", "kept"), "kept"),
    ("converted_csr", None, _put([0, 0], "@conv", "converted", "conv", "stride"), "stride"),
    ("converted_csr", None, _put([-5, -5], "@conv", "converted", "conv", "padding"),
     "padding"),
    ("converted_csr", None, _put("fp16", "dtype"), "dtype"),
    ("converted_csr", None, _put(KeyError, "dtype"), "dtype"),
    ("converted_csr", None, _put({"conv": "fc"}, "aliases"), "aliases"),
    ("converted_csr", None, _put({"patterns": []}, "@fc", "mask"), "mask"),
    ("compacted", None, _put([1], "@fc", "shapes"), "shapes"),
    ("compacted", None, _put({"weight": [2.5, 3]}, "@fc", "shapes"), "shapes.weight"),
    ("compacted", None, _put({"weight": [8, 128, 1]}, "@fc", "shapes"), "shapes.weight"),
    ("compacted", None, _put({"w.x": [8]}, "@fc", "shapes"), "shapes"),
    ("compacted", None, _put(True, "@fc", "folded"), "folded"),
    ("compacted", None, _put(False, "@fc", "folded"), "folded"),
    ("compacted", None, _put([1], "compaction_report"), "compaction_report"),
    ("converted_groupwise", None, _put("diagonal", "@fc", "converted", "layout"), "layout")])
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


class WithInfBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("floor", torch.tensor([float("-inf"), 0.0]))

    def forward(self, x):
        return self.fc(x).clamp_min(self.floor[1])


def test_the_architectures_own_inf_buffers_still_load(tmp_path):
    model = WithInfBuffer()
    spruce.prune(model, "group", 0.5)
    fresh = spruce.load(spruce.save(model, tmp_path / "inf.safetensors"), WithInfBuffer())
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))
    fast = spruce.convert(model, "groupwise", example_input=x)
    loaded = spruce.load(spruce.save(fast, tmp_path / "fast.safetensors"), WithInfBuffer())
    assert torch.equal(loaded(x), fast(x))


def _built(backend, layer, pattern, **kw):
    from spruce.backends import get_backend
    from spruce.backends.semi24 import Semi24Gemm
    from spruce.view import to_view
    spruce.prune(layer, pattern, 0.5, **kw)
    mask = spruce.get_mask(layer)
    plain = spruce.masks.unparametrized(layer)
    if backend == "semi24":  # its from_masked needs CUDA; the module builds anywhere
        geom = spruce.backends.csr.geom_of(plain)
        return Semi24Gemm(to_view(plain.weight.detach()) * mask, plain.bias, geom)
    return get_backend(backend).from_masked(plain, mask)


@pytest.mark.parametrize("backend,pattern,kw", [
    ("csr", "element", {}), ("bsr", "block", {"block": (4, 4)}), ("groupwise", "group", {}),
    ("channel", "channel", {}), ("groupwise_fused", "group", {}), ("semi24", "2:4", {})])
@pytest.mark.parametrize("make", [lambda: nn.Linear(64, 32),
                                  lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1)],
                         ids=["linear", "conv"])
def test_every_backends_layout_describes_its_state(backend, pattern, kw, make):
    """What ``layout(config())`` promises is exactly what the module saves, and a freshly
    built module passes ``check_state``: the checks never refuse a file spruce wrote."""
    from spruce.backends import get_backend
    from spruce.view import view_shape
    layer = make()
    module = _built(backend, layer, pattern, **kw)
    b = get_backend(backend)
    lay = b.layout(module.config())
    state = module.state_dict()
    assert lay.view == view_shape(layer)
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {k: shape for k, (shape, _) in lay.tensors.items()}
    assert all(dt is None and state[k].is_floating_point() or state[k].dtype == dt
               for k, (_, dt) in lay.tensors.items())
    assert b.check_state(module) is None


@pytest.mark.parametrize("name", ["converted_csr", "converted_bsr"])
def test_a_linear_layer_without_its_optional_conv_field_loads(files, tmp_path, name):
    """``conv`` is optional for a linear layer: without it the file loads the same (it
    raised a KeyError while building the empty module)."""
    header = header_of(files[name])
    del record(header, "head")["converted"]["conv"]
    path = rewrite(files[name], tmp_path / "noconv.safetensors", header=header)
    assert loads_same_or_names_file(files[name], path) == "same"
