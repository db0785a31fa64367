"""Build the fixed train/held-out sentence split from the Python standard library's docstrings.

Reads every ``*.py`` under the stdlib folder (tests, idlelib, site-packages excluded) with
``ast``, takes module/class/function docstrings, splits them into sentences, keeps plain
English sentences of 5–60 words, dedupes, shuffles with a fixed seed and writes
``corpus.jsonl`` (one ``{"split": "train"|"heldout", "text": ...}`` per line). The committed
file is what the benchmark reads; this script documents how it was made (the stdlib of the
Python that runs it, so another Python version gives another corpus).

    python benchmarks/learned_masks/make_corpus.py --train 2000 --heldout 500
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo"}
SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstrings(root: Path):
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def sentences(doc: str):
    for para in re.split(r"\n\s*\n", doc):
        if re.search(r">>>|::|^\s{2,}\S", para, re.M):  # examples, code blocks
            continue
        text = " ".join(para.split())
        for s in SENT_END.split(text):
            words = s.split()
            letters = sum(c.isalpha() for c in s)
            if 5 <= len(words) <= 60 and s[0].isupper() and s[-1] in ".!?" \
                    and letters > 0.7 * len(s.replace(" ", "")):
                yield s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(Path(__file__).with_name("corpus.jsonl")))
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for doc in docstrings(root):
        for s in sentences(doc):
            seen.setdefault(s, None)
    pool = sorted(seen)
    random.Random(args.seed).shuffle(pool)
    need = args.train + args.heldout
    if len(pool) < need:
        sys.exit(f"only {len(pool)} sentences found in {root}; ask for fewer")
    rows = [{"split": "train", "text": t} for t in pool[:args.train]] + \
           [{"split": "heldout", "text": t} for t in pool[args.train:need]]
    Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(pool)} distinct sentences in {root} (Python {sys.version.split()[0]}); "
          f"wrote {args.train} train + {args.heldout} held-out to {args.output}")


if __name__ == "__main__":
    main()
