"""``--example-input`` for ``spruce convert`` and ``spruce compact`` on a model outside the
zoo that takes two inputs."""

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import spruce
from spruce.cli import app
from spruce.cli.example_input import load_example_input
from spruce.errors import SpruceError

runner = CliRunner(env={"COLUMNS": "200"})

MODEL_PY = '''
import torch
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fx, self.fy = nn.Linear(12, 16), nn.Linear(12, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x, y):
        return self.head(torch.relu(self.fx(x)) + torch.relu(self.fy(y)))


def build():
    return TwoInputs()


def example():
    torch.manual_seed(1)
    return (torch.randn(3, 12), torch.randn(3, 12))
'''


@pytest.fixture
def two_inputs(tmp_path):
    src = tmp_path / "two.py"
    src.write_text(MODEL_PY)
    pruned = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["prune", f"{src}:build", "-p", "group", "-d", "0.5",
                              "-o", str(pruned)])
    assert res.exit_code == 0, res.output
    x, y = torch.randn(3, 12), torch.randn(3, 12)
    save_file({"x": x, "y": y}, str(tmp_path / "xy.safetensors"))
    torch.save((x, y), tmp_path / "xy.pt")
    return src, pruned, (x, y)


def test_convert_auto_takes_the_example_input_of_a_file_model(two_inputs, tmp_path):
    src, pruned, (x, y) = two_inputs
    out = tmp_path / "fast.safetensors"
    res = runner.invoke(app, ["convert", str(pruned), "-m", f"{src}:build", "-b", "auto",
                              "--example-input", str(tmp_path / "xy.safetensors"),
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "of 3 layers on auto" in res.output
    from spruce.zoo import from_file
    fast = spruce.load(out, from_file(f"{src}:build"))
    ref = spruce.load(pruned, from_file(f"{src}:build")).eval()
    torch.testing.assert_close(fast(x, y), ref(x, y))
    missing = runner.invoke(app, ["convert", str(pruned), "-m", f"{src}:build", "-b", "auto"])
    assert missing.exit_code == 2 and "--example-input" in missing.output


@pytest.mark.parametrize("example", ["xy.pt", "two.py:example"])
def test_convert_checks_the_whole_model_on_the_example(two_inputs, tmp_path, example):
    src, pruned, _ = two_inputs
    res = runner.invoke(app, ["convert", str(pruned), "-m", f"{src}:build", "-b", "groupwise",
                              "-e", str(tmp_path / example)])
    assert res.exit_code == 0, res.output
    assert "3 of 3 layers on groupwise" in res.output


def test_compact_needs_an_input_it_can_trace_with(two_inputs, tmp_path):
    src, pruned, (x, y) = two_inputs
    out = tmp_path / "small.safetensors"
    res = runner.invoke(app, ["compact", str(pruned), "-m", f"{src}:build", "-o", str(out)])
    assert res.exit_code == 2 and "cannot trace" in res.output and "--example-input" in \
        res.output, res.output
    assert not out.exists()
    res = runner.invoke(app, ["compact", str(pruned), "-m", f"{src}:build", "-o", str(out),
                              "--example-input", str(tmp_path / "xy.pt")])
    assert res.exit_code == 0, res.output
    assert "cannot trace" not in res.output and out.exists()


def test_example_input_files_and_their_errors(tmp_path):
    one = tmp_path / "one.safetensors"
    save_file({"pixels": torch.ones(2, 3)}, str(one))
    assert torch.equal(load_example_input(one), torch.ones(2, 3))  # one tensor: positional
    torch.save([torch.zeros(1), torch.ones(1)], tmp_path / "l.pt")
    assert isinstance(load_example_input(tmp_path / "l.pt"), tuple)
    torch.save({"a": 1}, tmp_path / "bad.pt")
    with pytest.raises(SpruceError, match="bad.pt.*not an example input"):
        load_example_input(tmp_path / "bad.pt")
    with pytest.raises(SpruceError, match="no such"):
        load_example_input(tmp_path / "none.safetensors")
    (tmp_path / "x.npy").write_bytes(b"")
    with pytest.raises(SpruceError, match="unknown example-input format"):
        load_example_input(tmp_path / "x.npy")
