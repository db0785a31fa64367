"""Pack all-MiniLM-L6-v2 into ``.minilm/`` for a machine without network or the package.

The model file is 91 MB. The corpus (``corpus.jsonl``) uses 3,675 of the 30,522
word-embedding rows: the others are set to zero, which gzips the file to 46 MB; every other
tensor is byte-identical, so on the corpus the packed model computes exactly what the
original does. On the target machine, unpack it and point ``minilm.py`` at it:

    PYTHONPATH=src:. python benchmarks/learned_masks/pack_minilm.py     # writes .minilm/
    mkdir -p /tmp/mini && cp .minilm/*.* /tmp/mini/ && \
        gunzip -c .minilm/gz/model.safetensors.gz > /tmp/mini/model.safetensors
    PYTHONPATH=src:. python benchmarks/learned_masks/minilm.py --model-dir /tmp/mini ...
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import torch

from minilm import model_dir  # the script directory is on sys.path

HERE = Path(__file__).parent


def main(out: Path = Path(".minilm"), max_len: int = 64) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer
    src = model_dir()
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    used: set[int] = set()
    for line in (HERE / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        used.update(tok(json.loads(line)["text"], truncation=True, max_length=max_len)
                    ["input_ids"])
    state = load_file(str(src / "model.safetensors"))
    emb = state["embeddings.word_embeddings.weight"]
    keep = torch.zeros(emb.shape[0], dtype=torch.bool)
    keep[sorted(used)] = True
    emb[~keep] = 0
    (out / "gz").mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors"
    save_file(state, str(tmp), metadata={"format": "pt"})
    with open(tmp, "rb") as f, gzip.open(out / "gz" / "model.safetensors.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    tmp.unlink()
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    print(f"{out}: {len(used)} of {emb.shape[0]} embedding rows used")


if __name__ == "__main__":
    main()
