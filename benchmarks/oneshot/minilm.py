"""One-shot criteria on all-MiniLM-L6-v2 (offline): fidelity to the dense sentence
embeddings for every pattern × criterion, on two corpora.

Every Linear of the encoder (36: q, k, v, attention output, FFN in and out × 6; the pooler
is unused by mean pooling) is pruned with one pattern — 2:4, element 0.5, group 0.75 and
0.5 (whole input columns), channel 0.75 with heads (``scope="coupled"``: heads and FFN
channels, each coupled group keeping 75%) — by one criterion: magnitude, LAMP (``scope=
"lamp"`` where the pattern allows a global choice), Taylor (in-batch contrastive loss of the
embeddings against the dense ones, no labels), Wanda, SparseGPT (as published: each layer
fitted to its own outputs on the inputs it now gets), SparseGPT with dense targets (each
layer fitted to the dense model's outputs, ``targets="dense"``), channel permutation (2:4,
every Linear, input gathered), learned 2:4 (Gumbel-Softmax distillation started from the
SparseGPT mask), and learned + reconstruction (the hardened learned masks with the kept
weights refitted by least squares). Calibration: the first ``--calib`` sentences of the
training split of ``benchmarks/learned_masks/corpus.jsonl`` (stdlib docstrings; 512 by
default, batches of 32, at most 64 tokens).

Fidelity: mean cosine to the dense embeddings, nearest-neighbour top-1 agreement and top-10
overlap, on that corpus's 500 held-out sentences and on ``prose.jsonl`` (500 sentences of
README and licence prose from installed packages, ``make_prose_corpus.py``).

    PYTHONPATH=src:. python benchmarks/oneshot/minilm.py --criteria magnitude,wanda,sparsegpt
    PYTHONPATH=src:. python benchmarks/oneshot/minilm.py --criteria learned --device cuda
    PYTHONPATH=src:. python benchmarks/oneshot/minilm.py --render   # table + plot from JSON
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
import torch.nn.functional as F  # noqa: E402

import spruce  # noqa: E402
from benchmarks.learned_masks.minilm import (EXCLUDE, embed, embed_all, fidelity,  # noqa: E402
                                             load, model_dir, permuted_all, read_corpus,
                                             texts, with_teacher)
from benchmarks.oneshot.render import render  # noqa: E402
from spruce.criteria import SparseGPT, Taylor, reconstruct  # noqa: E402
from spruce.learned import LearnedSpec, attach_learned, fit_masks, harden  # noqa: E402
from spruce.learned.objectives import cosine  # noqa: E402

HERE = Path(__file__).parent
CORPUS = HERE.parent / "learned_masks" / "corpus.jsonl"
PROSE = HERE / "prose.jsonl"

# label → (pattern, density, kept fraction, scope="coupled"?)
PATTERNS = {"2:4": ("2:4", None, 0.5, False), "element 0.5": ("element", 0.5, 0.5, False),
            "group 0.75": ("group", 0.75, 0.75, False), "group 0.5": ("group", 0.5, 0.5, False),
            "channel 0.75": ("channel", 0.75, 0.75, True)}
CRITERIA = ("magnitude", "lamp", "taylor", "wanda", "sparsegpt", "sparsegpt-dense", "permutation",
            "learned")
NM_ONLY = ("permutation", "learned")  # criteria that only make 2:4 masks


def contrastive(net, batch) -> torch.Tensor:
    """In-batch InfoNCE of the embeddings against themselves detached (the dense teacher
    while Taylor scores the dense model): nonzero gradients without labels."""
    e = F.normalize(embed(net, batch), dim=-1)
    logits = e @ e.detach().T / 0.05
    return F.cross_entropy(logits, torch.arange(len(e), device=e.device))


def one_shot(base, label, criterion, calib, args):
    """Prune a copy of ``base``; returns (model, wall seconds, note)."""
    pattern, density, _, coupled = PATTERNS[label]
    model = copy.deepcopy(base)
    kw: dict = {"exclude": list(EXCLUDE)}
    crit: object = criterion
    note = ""
    if criterion in ("wanda", "sparsegpt", "sparsegpt-dense"):
        kw["calibration"] = calib
    if criterion == "sparsegpt-dense":
        crit = SparseGPT(targets="dense")
    elif criterion == "taylor":
        model.requires_grad_(True)
        crit = Taylor(data=calib, loss_fn=contrastive)
    if criterion == "lamp" and pattern in ("element", "group"):
        kw["scope"], note = "lamp", "scope lamp (global)"
    t0 = time.perf_counter()
    if coupled:
        spruce.prune(model, pattern, density, criterion=crit, scope="coupled",
                     example_input=calib[0], **kw)
    else:
        spruce.prune(model, pattern, density, criterion=crit, **kw)
    wall = time.perf_counter() - t0
    model.requires_grad_(False)
    return model, wall, note


def learned_rows(base, train, teacher, calib, args):
    """Learned 2:4 from the SparseGPT mask (dense weights frozen), then the same hardened
    masks with least-squares reconstruction of the kept weights."""
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    spec = LearnedSpec(init=args.learned_init, tau=1.0, tau_end=0.1, tau_schedule="exp",
                       anneal_steps=args.steps, hard=True, seed=args.seed)
    attach_learned(model, spec, exclude=EXCLUDE, calibration=calib)

    def objective(net, batch) -> torch.Tensor:
        return cosine(embed(net, batch), batch["teacher"])
    fit = fit_masks(model, objective, with_teacher(train, teacher), args.steps,
                    batch_size=32, lr=args.lr, schedule="cosine", seed=args.seed,
                    progress=not args.quiet)
    harden(model)
    wall = time.perf_counter() - t0
    yield model, wall, f"{fit.steps} steps, lr {args.lr}, init {args.learned_init}"
    t0 = time.perf_counter()
    reconstruct(model, calib, exclude=EXCLUDE, targets="dense")
    yield model, wall + time.perf_counter() - t0, "learned masks, kept weights refit to the " \
        "dense outputs (exact LS per row)"


def rows_for(criterion, base, train, teacher, calib, args):
    """(pattern label, criterion label, model, wall, note) for each row of ``criterion``."""
    if criterion == "permutation":
        model, iters, wall = permuted_all(base, args)
        yield "2:4", "permutation", model, wall, f"{iters} swap-search iterations"
        return
    if criterion == "learned":
        names = ("learned", "learned + reconstruction")
        for name, (model, wall, note) in zip(names, learned_rows(base, train, teacher, calib,
                                                                  args), strict=True):
            yield "2:4", name, model, wall, note
        return
    for label in args.patterns:
        model, wall, note = one_shot(base, label, criterion, calib, args)
        yield label, criterion, model, wall, note


def measure(model, sets, dense) -> dict:
    return {name: fidelity(embed_all(model, split), dense[name]) for name, split in sets.items()}


def merge(path: Path, result: dict) -> dict:
    """Rows of earlier runs in the same file stay unless this run redid them."""
    if path.exists():
        old = json.loads(path.read_text())
        done = {(r["pattern"], r["criterion"]) for r in result["rows"]}
        result["rows"] = [r for r in old["rows"] if (r["pattern"], r["criterion"]) not in done] \
            + result["rows"]
        result["runs"] = old.get("runs", []) + result["runs"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--criteria", default="magnitude,lamp,taylor,wanda,sparsegpt,"
                    "sparsegpt-dense,permutation",
                    help=f"comma-separated, from {', '.join(CRITERIA)} (learned makes the "
                    "learned and learned + reconstruction rows)")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib", type=int, default=512, help="calibration sentences (train)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="learned: AdamW steps")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--learned-init", default="sparsegpt")
    ap.add_argument("--perm-iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--output", default=None, help="default: benchmarks/results/cpu/"
                    "minilm-oneshot, or .../h200/minilm-oneshot on cuda")
    ap.add_argument("--render", nargs="*", default=None, metavar="JSON",
                    help="only write the table and plot from these JSON files (default: the "
                    "output folder's results.json)")
    args = ap.parse_args()
    out = Path(args.output or "benchmarks/results/" + ("h200" if args.device.startswith("cuda")
                                                       else "cpu") + "/minilm-oneshot")
    if args.render is not None:
        render([Path(p) for p in args.render] or [out / "results.json"], out)
        return
    args.patterns = [p.strip() for p in args.patterns.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",")]
    bad = [c for c in criteria if c not in CRITERIA] + \
        [p for p in args.patterns if p not in PATTERNS]
    if bad:
        raise SystemExit(f"unknown {bad}; criteria: {CRITERIA}, patterns: {list(PATTERNS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)

    tok, base = load(model_dir())
    base.to(args.device).requires_grad_(False)
    train_txt, held_txt = read_corpus(CORPUS)
    prose_txt = [json.loads(line)["text"] for line in PROSE.read_text().splitlines()]
    train = texts(tok, train_txt, args.max_len)
    sets = {"heldout": texts(tok, held_txt, args.max_len),
            "prose": texts(tok, prose_txt, args.max_len)}
    calib = [train.batch(range(i, min(i + 32, args.calib))) for i in range(0, args.calib, 32)]
    dense = {name: embed_all(base, split) for name, split in sets.items()}
    teacher = embed_all(base, train) if "learned" in criteria else None
    rows = []
    for criterion in criteria:
        for label, name, model, wall, note in rows_for(criterion, base, train, teacher, calib,
                                                       args):
            fid = measure(model.to(args.device), sets, dense)
            rows.append({"pattern": label, "criterion": name, "kept": PATTERNS[label][2],
                         **fid, "wall_s": round(wall, 2), "note": note})
            print(f"{label:13s} {name:26s} cos {fid['heldout']['cosine']:.4f} / prose "
                  f"{fid['prose']['cosine']:.4f}  nn1 {fid['heldout']['nn1_agreement']:.3f}"
                  f"  nn10 {fid['heldout']['nn10_overlap']:.3f}  {wall:.1f}s", flush=True)
    env = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
           "cpu": platform.processor() or platform.machine(), "loadavg": os.getloadavg()[0],
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    run = {"args": {k: v for k, v in vars(args).items() if k != "render"}, "env": env,
           "criteria": criteria}
    result = merge(out / "results.json", {"runs": [run], "rows": rows,
                                          "calibration_sentences": args.calib,
                                          "heldout_sentences": len(held_txt),
                                          "prose_sentences": len(prose_txt)})
    (out / "results.json").write_text(json.dumps(result, indent=1))
    render([out / "results.json"], out)


if __name__ == "__main__":
    main()
