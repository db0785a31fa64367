"""How long SparseGPT (and Wanda) take on BERT-base and a ~1B-parameter Llama-style model
built from configs (random weights, nothing downloaded), with the calibration the papers
use: ``--seqs`` sequences of ``--seq-len`` random tokens.

Prints a short table and writes ``timing.json`` under ``--output``; each row has the wall
time of ``spruce.prune`` (sequential calibration + solves), the peak device memory above
the model's own, the number of pruned layers, the kept fraction and the model's size.

    PYTHONPATH=src:. python benchmarks/oneshot/timing.py --device cuda --dtype bf16
    PYTHONPATH=src:. python benchmarks/oneshot/timing.py --device cpu --models bert \
        --seqs 8 --seq-len 128 --dtype fp32          # a quick check on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import spruce

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # "bert" | "llama"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    exclude: tuple[str, ...]


PRESETS = {
    "bert": Preset("BERT-base", "bert", 768, 12, 12, 12, 3072, 30522, ("pooler", "pooler.*")),
    "llama": Preset("Llama-style 1B", "llama", 2048, 22, 16, 4, 5632, 32000, ()),  # 1.06B
}


def build(p: Preset, layers: int | None):
    n = layers or p.layers
    if p.family == "bert":
        from transformers import BertConfig, BertModel
        cfg = BertConfig(hidden_size=p.hidden, num_hidden_layers=n, num_attention_heads=p.heads,
                         intermediate_size=p.ffn, vocab_size=p.vocab,
                         max_position_embeddings=1024)
        return BertModel(cfg)
    from transformers import LlamaConfig, LlamaModel
    cfg = LlamaConfig(hidden_size=p.hidden, num_hidden_layers=n, num_attention_heads=p.heads,
                      num_key_value_heads=p.kv_heads, intermediate_size=p.ffn,
                      vocab_size=p.vocab, max_position_embeddings=4096)
    return LlamaModel(cfg)


def calibration(p: Preset, seqs: int, seq_len: int, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, p.vocab, (seqs, seq_len), generator=g)
    return [ids[i:i + batch] for i in range(0, seqs, batch)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one(p: Preset, criterion: str, pattern: str, args) -> dict:
    torch.manual_seed(args.seed)
    model = build(p, args.layers).to(DTYPES[args.dtype]).to(args.device).eval()
    params = sum(t.numel() for t in model.parameters())
    calib = calibration(p, args.seqs, args.seq_len, args.batch, args.seed)
    density = None if ":" in pattern else 0.5
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
    sync(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        report = spruce.prune(model, pattern, density, criterion=criterion,
                              calibration=calib, exclude=list(p.exclude))
    sync(args.device)
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**30 \
        if args.device.startswith("cuda") else None
    return {"model": p.name, "criterion": criterion, "pattern": pattern, "wall_s": round(wall, 2),
            "layers": len(report.rows), "kept": round(report.overall_density, 4),
            "params_m": round(params / 1e6, 1), "peak_extra_gib": peak,
            "tokens": args.seqs * args.seq_len}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="bert,llama")
    ap.add_argument("--criteria", default="sparsegpt,wanda")
    ap.add_argument("--patterns", default="2:4,element")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--seqs", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="sequences per calibration batch")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks (a quick check)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="benchmarks/results/h200/oneshot-timing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for m in args.models.split(","):
        for crit in args.criteria.split(","):
            for pat in args.patterns.split(","):
                rows.append(one(PRESETS[m.strip()], crit.strip(), pat.strip(), args))
                r = rows[-1]
                print(f"{r['model']:15s} {r['criterion']:9s} {r['pattern']:8s} "
                      f"{r['wall_s']:8.2f} s  {r['layers']} layers  kept {r['kept']:.3f}  "
                      f"peak +{r['peak_extra_gib'] or 0:.2f} GiB", flush=True)
    env = {"device": args.device, "gpu": torch.cuda.get_device_name()
           if args.device.startswith("cuda") else None, "torch": torch.__version__,
           "dtype": args.dtype, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "loadavg": os.getloadavg()[0]}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows},
                                                indent=1))
    print("| model | criterion | pattern | wall s | layers | kept | params M | peak +GiB |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['criterion']} | {r['pattern']} | {r['wall_s']} | "
              f"{r['layers']} | {r['kept']} | {r['params_m']} | {r['peak_extra_gib']} |")


if __name__ == "__main__":
    main()
