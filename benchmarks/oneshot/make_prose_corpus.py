"""Build a second, held-out sentence corpus of another domain: prose from the documentation
files shipped with installed packages (package descriptions in ``*.dist-info/METADATA``,
README/CHANGES-style ``.md``/``.rst``/``.txt`` files, LICENSE/NOTICE texts).

The first corpus (``benchmarks/learned_masks/corpus.jsonl``) is docstrings of the Python
standard library; this one is README and licence prose. Markup is stripped (code blocks,
doctest and shell lines, reST directives, links, inline code), paragraphs are split into
sentences, and only plain English sentences of 5–60 words with no code-like characters are
kept, at most ``--per-file`` from one file, deduplicated and disjoint from the first
corpus; a fixed-seed shuffle picks ``--count``. Every sentence is ``"split": "heldout"``:
the benchmark calibrates on the first corpus's training split only. The committed file is
what the benchmark reads; this script documents how it was made (from the packages of the
Python that runs it).

    python benchmarks/oneshot/make_prose_corpus.py --count 500
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sysconfig
from pathlib import Path

HERE = Path(__file__).parent
FIRST = HERE.parent / "learned_masks" / "corpus.jsonl"
SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
CODE = re.compile(r"[{}\[\]<>=_\\|#@$`*~^]|\(\)|::|>>>|https?:|www\.|\.py\b|\w\.\w+\(|--")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
NAMES = ("LICENSE", "LICENCE", "COPYING", "NOTICE", "README", "CHANGES", "HISTORY", "AUTHORS")


def documents(root: Path):
    """(path, text) of every prose file under ``root``."""
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.stat().st_size > 400_000:
            continue
        name = path.name.upper()
        if path.name == "METADATA":
            text = path.read_text(encoding="utf-8", errors="replace")
            yield path, text.split("\n\n", 1)[1] if "\n\n" in text else ""
        elif name.startswith(NAMES) or path.suffix.lower() in (".md", ".rst"):
            yield path, path.read_text(encoding="utf-8", errors="replace")


def paragraphs(text: str):
    """Prose paragraphs: fenced/indented code, directives and list markers removed."""
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)
    para: list[str] = []
    for line in text.splitlines():
        plain = line.strip()
        code = line.startswith(("    ", "\t")) or plain.startswith((">>>", "$ ", "..", "|"))
        if not plain or code or set(plain) <= set("=-~^*#+`'\""):
            if para:
                yield " ".join(para)
            para = []
            continue
        para.append(re.sub(r"^([-*+]|\d+\.)\s+", "", plain.lstrip("#> ")))
    if para:
        yield " ".join(para)


def sentences(paragraph: str):
    paragraph = LINK.sub(r"\1", paragraph)
    for s in SENT_END.split(" ".join(paragraph.split())):
        words = s.split()
        letters = sum(c.isalpha() or c == " " for c in s) / max(1, len(s))
        if (5 <= len(words) <= 60 and s[0].isupper() and s[-1] in ".!?" and letters > 0.9
                and not CODE.search(s) and s.isascii()):
            yield s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=sysconfig.get_paths()["purelib"])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--per-file", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(HERE / "prose.jsonl"))
    args = ap.parse_args()
    first = {json.loads(line)["text"] for line in FIRST.read_text(encoding="utf-8").splitlines()}
    seen, picked = set(first), []
    for _, text in documents(Path(args.root)):
        kept = 0
        for para in paragraphs(text):
            for s in sentences(para):
                if s not in seen and kept < args.per_file:
                    seen.add(s)
                    picked.append(s)
                    kept += 1
    random.Random(args.seed).shuffle(picked)
    if len(picked) < args.count:
        raise SystemExit(f"only {len(picked)} sentences found under {args.root}")
    rows = [{"split": "heldout", "text": s} for s in picked[: args.count]]
    Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(picked)} candidate sentences; wrote {args.count} to {args.output}")


if __name__ == "__main__":
    main()
