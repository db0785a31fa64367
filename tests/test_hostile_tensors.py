"""A saved model's tensors are untrusted input too: tampered index tensors, masks and
weights are a SpruceError naming the file, the layer and the tensor — never a crash or wrong
outputs — and these checks never refuse a file spruce wrote itself."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import spruce
from spruce.errors import SpruceError
from tests.file_cases import child_env
from tests.hostile_files_kit import CRASHERS, example, header_of, record, rewrite, tiny

ROOT = Path(__file__).resolve().parents[1]
MASK = "fc.parametrizations.weight.0.mask"

# ``files``, one file of every format spruce writes: a fixture of tests/conftest.py


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


# ------------------------------------------------------------------ buffers and backend state

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
