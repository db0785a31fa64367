"""Every relative link in the top-level docs resolves to a file git tracks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")   # [text](target) and ![alt](target)
EXTERNAL = ("http://", "https://", "mailto:", "#")


def tracked() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return set(out.splitlines())


def docs() -> list[Path]:
    names = ["README.md", "CONTRIBUTING.md", "benchmarks/README.md"]
    return [ROOT / n for n in names] + sorted((ROOT / "docs").glob("*.md"))


def links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)   # not inside code blocks
    return [t for t in LINK.findall(text) if not t.startswith(EXTERNAL)]


def resolve(doc: Path, target: str, files: set[str]) -> bool:
    path = (doc.parent / target.split("#")[0]).resolve()
    try:
        rel = path.relative_to(ROOT).as_posix()
    except ValueError:
        return False
    return rel in files or any(f.startswith(rel + "/") for f in files)  # a file or a folder


@pytest.mark.parametrize("doc", docs(), ids=lambda d: d.relative_to(ROOT).as_posix())
def test_relative_links_resolve_to_tracked_files(doc):
    assert doc.exists(), f"{doc.relative_to(ROOT)} is missing"
    files = tracked()
    broken = [t for t in links(doc) if not resolve(doc, t, files)]
    assert not broken, f"{doc.relative_to(ROOT)}: links to untracked or missing paths: {broken}"


def test_the_docs_have_links():
    assert sum(len(links(d)) for d in docs()) > 20
