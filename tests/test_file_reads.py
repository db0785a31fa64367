"""One loader path: every command reads and checks a file's header exactly once, through
the one function that opens headers (``spruce.fileformat.reading.read_stored``)."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import spruce
from spruce.cli import app
from spruce.fileformat import reading
from spruce.train.setup import load_init
from tests.hostile_files_kit import example, tiny

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner(env={"COLUMNS": "200"})

MODEL_PY = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.head(torch.relu(self.fc(x.flatten(1))))

def build():
    torch.manual_seed(0)
    return Tiny()
'''


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every path whose header is read from now on."""
    calls, real = [], reading.read_stored

    def spy(path):
        calls.append(Path(path))
        return real(path)
    monkeypatch.setattr(reading, "read_stored", spy)
    return calls


def _saved(tmp_path: Path, kind: str) -> Path:
    model = tiny()
    spruce.prune(model, "group", 0.5)
    if kind == "compacted":
        model = spruce.compact(model, example_input=example())
    return spruce.save(model, tmp_path / f"{kind}.safetensors")


def _files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "net.py").write_text(MODEL_PY)
    save_file({"x": example()}, str(tmp_path / "x.safetensors"))
    return f"{tmp_path / 'net.py'}:build", str(tmp_path / "x.safetensors")


@pytest.mark.parametrize("kind", ["masked", "compacted"])
def test_spruce_convert_reads_the_header_once(tmp_path, reads, kind):
    src = _saved(tmp_path, kind)
    model, x = _files(tmp_path)
    out = tmp_path / "fast.safetensors"
    reads.clear()
    res = runner.invoke(app, ["convert", str(src), "-m", model, "-b", "groupwise", "-e", x,
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert reads == [src]
    reads.clear()
    loaded = spruce.load(out, tiny())  # what convert wrote is the converted source
    assert reads == [out]
    with torch.no_grad():
        torch.testing.assert_close(loaded(example()), spruce.load(src, tiny())(example()),
                                   rtol=1e-5, atol=1e-6)
    assert type(loaded.fc).__name__ == "GroupwiseLinear"


def test_spruce_compact_reads_the_header_once(tmp_path, reads):
    src = _saved(tmp_path, "masked")
    model, x = _files(tmp_path)
    reads.clear()
    res = runner.invoke(app, ["compact", str(src), "-m", model, "-e", x,
                              "-o", str(tmp_path / "small.safetensors")])
    assert res.exit_code == 0, res.output
    assert reads == [src]


def test_spruce_load_and_train_init_read_the_header_once(tmp_path, reads):
    src = _saved(tmp_path, "masked")
    reads.clear()
    spruce.load(src, tiny())
    assert reads == [src]
    reads.clear()
    load_init(tiny(), str(src))
    assert reads == [src]


def test_only_the_loader_opens_headers():
    """``read_stored`` is called from one place (``spruce.io.read``); every loader, command
    and check goes through it."""
    callers = [str(p.relative_to(ROOT / "src")) for p in (ROOT / "src").rglob("*.py")
               if re.search(r"read_stored\(", p.read_text())]
    assert sorted(callers) == ["spruce/fileformat/reading.py", "spruce/io.py"]
    io_text = (ROOT / "src/spruce/io.py").read_text()
    assert len(re.findall(r"read_stored\(", io_text)) == 1
