"""Files of every format spruce writes, and ways to tamper with them (for the hostile-file
tests). Also run as a child process (``python -m tests.hostile_files_kit DIR``) to load
files with tampered index tensors, so a crash in a sparse kernel fails a test instead of
killing pytest."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import spruce
from spruce.auto import AutoTiming
from spruce.errors import SpruceError

FAST = AutoTiming(warmup=0, min_runs=1, min_time_s=0.0, max_time_s=0.01, abandon=None)
FUZZ = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
CONVERTED = {"csr": "element", "bsr": "block", "groupwise": "group", "channel": "channel",
             "dense": "group"}
PRUNE = {"element": ("element", 0.5, {}), "block": ("block", 0.5, {"block": (2, 2)}),
         "group": ("group", 0.5, {}), "channel": ("channel", 0.5, {})}


class Tiny(nn.Module):
    """A conv, a linear layer and a head: every backend's linear and conv paths."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.head(torch.relu(self.fc(x.flatten(1))))


def tiny() -> Tiny:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Tiny()


def example() -> torch.Tensor:
    return torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))


def make_files(d: Path) -> dict[str, Path]:
    """One file of every format: masked (four patterns), compacted, converted with every
    CPU backend, and an ``auto`` plan."""
    d.mkdir(parents=True, exist_ok=True)
    files, pruned = {}, {}
    for name, (pattern, density, kw) in PRUNE.items():
        m = tiny()
        spruce.prune(m, pattern, density, **kw)
        files[f"masked_{name}"] = spruce.save(m, d / f"masked_{name}.safetensors")
        pruned[name] = m
    for backend, pattern in CONVERTED.items():
        fast = spruce.convert(pruned[pattern], backend, example_input=example())
        files[f"converted_{backend}"] = spruce.save(fast, d / f"converted_{backend}.safetensors")
    small = spruce.compact(pruned["group"], example_input=example())
    files["compacted"] = spruce.save(small, d / "compacted.safetensors")
    files["plan"] = d / "plan.json"
    spruce.convert(pruned["group"], "auto", example_input=example(), plan=files["plan"],
                   timing=FAST)
    return files


def header_of(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["spruce"])


def record(header: dict, name: str) -> dict:
    """The layer record named ``name`` of a header (``"*"``: the first)."""
    return next(r for r in header["layers"] if name == "*" or r["name"] == name)


def header_edit(value, *path):
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


def rewrite(src: Path, dst: Path, header=None, tensors=None, raw: str | None = None) -> Path:
    """``src`` with another header (a dict, or ``raw`` text) and/or other tensors."""
    tensors = load_file(str(src)) if tensors is None else tensors
    text = raw if raw is not None else json.dumps(header_of(src) if header is None else header)
    save_file(tensors, str(dst), metadata={"spruce": text})
    return dst


def outputs(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return spruce.load(path, tiny())(example())


_ORIGINAL: dict[Path, torch.Tensor] = {}


def original_outputs(path: Path) -> torch.Tensor:
    if path not in _ORIGINAL:
        _ORIGINAL[path] = outputs(path)
    return _ORIGINAL[path]


def loads_same_or_names_file(original: Path, mutated: Path) -> str:
    """The property: ``mutated`` loads with the original's outputs, or raises a
    SpruceError naming it. Returns "same" or "error"."""
    try:
        got = outputs(mutated)
    except SpruceError as e:
        assert str(mutated) in str(e), str(e)
        return "error"
    torch.testing.assert_close(got, original_outputs(original), rtol=1e-5, atol=1e-6)
    return "same"


# ------------------------------------------------------------------ index tensors

def index_keys(path: Path) -> list[str]:
    return sorted(k for k, v in load_file(str(path)).items()
                  if not v.is_floating_point() and v.dtype != torch.bool)


def tamper(tensors: dict, key: str, pos: int, value: int | None, swap: int | None) -> dict:
    """Set entry ``pos`` of ``tensors[key]`` to ``value``, or swap it with entry ``swap``."""
    t = tensors[key].clone().reshape(-1)
    pos %= t.numel()
    if value is not None:
        info = torch.iinfo(t.dtype)
        t[pos] = min(max(value, info.min), info.max)
    else:
        other = swap % t.numel()
        t[pos], t[other] = t[other].clone(), t[pos].clone()
    return {**tensors, key: t.reshape(tensors[key].shape)}


VALUES = st.one_of(st.integers(-3, 300), st.sampled_from([-2**31, 2**31 - 1, 10**6]))


def fuzz_indices(d: Path, base: str) -> dict[str, int]:
    """Hypothesis over tampered index tensors of ``d/base``; counts of each outcome."""
    original = d / base
    keys, tensors = index_keys(original), load_file(str(original))
    seen = {"same": 0, "error": 0}

    @FUZZ
    @given(key=st.sampled_from(keys), pos=st.integers(0, 10**4),
           value=st.none() | VALUES, swap=st.integers(0, 10**4))
    def check(key, pos, value, swap):
        mutated = rewrite(original, d / f"idx_{base}", tensors=tamper(tensors, key, pos,
                                                                      value, swap))
        seen[loads_same_or_names_file(original, mutated)] += 1

    check()
    return seen


# (backend, tensor, how): tamperings that crashed or silently misled before they were checked
CRASHERS = [
    ("csr", "conv.col_indices", "oob"), ("csr", "conv.col_indices", "negative"),
    ("csr", "conv.crow_indices", "nonmonotone"), ("csr", "conv.crow_indices", "end"),
    ("csr", "conv.crow_indices", "start"), ("csr", "conv.col_indices", "unsorted"),
    ("bsr", "conv.col_indices", "oob"), ("bsr", "conv.col_indices", "negative"),
    ("bsr", "conv.crow_indices", "nonmonotone"), ("groupwise", "fc.kept", "dup"),
    ("groupwise", "fc.kept", "oob"), ("groupwise", "fc.kept", "negative"),
    ("channel", "fc.kept", "dup"), ("channel", "fc.kept", "oob")]


def tamper_named(t: torch.Tensor, how: str) -> torch.Tensor:
    x = t.clone()
    if how == "oob":
        x[0] = 10**6
    elif how == "negative":
        x[0] = -5
    elif how == "nonmonotone":
        x[1], x[2] = x[2] + 3, x[1].clone()
    elif how == "end":
        x[-1] += 1000
    elif how == "start":
        x[0] = 1
    elif how == "unsorted":
        x[0], x[1] = x[1].clone(), x[0].clone()
    elif how == "dup":
        x[1] = x[0]
    return x


def crashers(d: Path) -> None:
    """Load each of ``CRASHERS``; print one JSON line per case (the last line before a
    crash names the culprit)."""
    for backend, key, how in CRASHERS:
        src = d / f"converted_{backend}.safetensors"
        tensors = load_file(str(src))
        tensors[key] = tamper_named(tensors[key], how)
        dst = rewrite(src, d / f"tampered_{backend}_{how}.safetensors", tensors=tensors)
        print(json.dumps({"case": [backend, key, how]}), flush=True)
        try:
            outputs(dst)
            result = "loaded"
        except SpruceError as e:
            result = str(e)
        print(json.dumps({"case": [backend, key, how], "result": result}), flush=True)


def main(d: str, bases: list[str]) -> None:
    """``crashers`` first, then hypothesis over the index tensors of each of ``bases``."""
    crashers(Path(d))
    for base in bases:
        print(json.dumps({"fuzz": base, "seen": fuzz_indices(Path(d), base)}), flush=True)


# ------------------------------------------------------------------ headers

def header_paths(obj, prefix=()) -> list[tuple]:
    """Every path into a JSON object (keys and list positions)."""
    found = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else []
    for k, v in items:
        found += header_paths(v, prefix + (k,))
    return found


DELETE = object()
HOSTILE = [DELETE, None, -1, 0, 1, 10**12, -10**12, 2.5, float("nan"), True, "junk", "",
           "../x.py:f", [], [0, 0], [-5, -5], {}, {"a": 1}, "fp16", "int64", "Identity",
           "conv2d", "linear", "channels", "rows"]


def mutate(header: dict, path: tuple, value) -> dict:
    h = copy.deepcopy(header)
    obj = h
    for k in path[:-1]:
        obj = obj[k]
    if value is DELETE:
        obj.pop(path[-1]) if isinstance(obj, dict) else obj.pop(path[-1])
    else:
        obj[path[-1]] = value
    return h


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])


def fuzz_header(original: Path, mutated_name: str) -> None:
    """Every header path of ``original`` set to every hostile value: each mutated file loads
    the same outputs or fails naming the file."""
    header = header_of(original)

    @FUZZ
    @given(path=st.sampled_from(header_paths(header)), value=st.sampled_from(HOSTILE))
    def check(path, value):
        mutated = rewrite(original, original.with_name(mutated_name),
                          header=mutate(header, path, value))
        loads_same_or_names_file(original, mutated)

    check()
