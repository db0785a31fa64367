"""``spruce train`` (also ``python -m spruce.train`` and ``torchrun -m spruce.train``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from ..patterns.block import parse_block
from .checks import outputs_ok
from .common import console, fail


def _criterion(name: str, options: list[str]) -> str | dict:
    """``--criterion dst --criterion-opt alpha=1e-4`` → ``{"name": "dst", "alpha": 1e-4}``."""
    if not options:
        return name
    spec: dict = {"name": name}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ValueError(f"--criterion-opt {opt!r}: write KEY=VALUE, e.g. lam=2e-4")
        try:
            spec[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            spec[key.strip()] = value
    return spec


def train_cmd(
    model: str = typer.Argument(..., help="tiny_cnn, a zoo name (resnet18, ...) or FILE.py:FN"),
    data: str = typer.Option("digits", "--data", help="'digits' (built in) or a dataset folder"),
    dataset_format: str = typer.Option(None, "--dataset-format",
                                       help="cifar10 | tiny-imagenet | imagenet | qqp "
                                            "(default: detected from the folder)"),
    epochs: int = typer.Option(10, help="passes over the training split"),
    steps: int = typer.Option(None, "--steps", help="optimizer steps, in place of --epochs "
                              "(the last epoch may be partial)"),
    eval_every: int = typer.Option(0, "--eval-every",
                                   help="evaluate every N steps (0: at epoch ends)"),
    batch_size: int = typer.Option(64, "--batch-size", "-b",
                                   help="global batch (split over DDP processes)"),
    lr: float = typer.Option(0.05, help="peak learning rate"),
    optimizer: str = typer.Option("sgd", help="sgd (momentum 0.9) | adamw"),
    schedule: str = typer.Option("cosine", help="LR schedule: constant | step | cosine"),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear LR warm-up steps"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    pattern: str = typer.Option(None, "--pattern", "-p",
                                help="element | N:M (2:4) | block | group | channel"),
    density: float = typer.Option(None, "--density", "-d", help="final kept fraction"),
    block: str = typer.Option("8x8", help="block tile for --pattern block"),
    prune_mode: str = typer.Option(None, "--prune-mode",
                                   help="oneshot (default) | gradual | during"),
    criterion: str = typer.Option("magnitude", "--criterion", "-c",
                                  help="magnitude | lamp | random; during: sr-ste | "
                                       "block-gate | dst"),
    criterion_opt: list[str] = typer.Option([], "--criterion-opt",
                                            help="KEY=VALUE for the criterion (e.g. lam=2e-4)"),
    scope: str = typer.Option("uniform", help="uniform | global | lamp"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="module glob left dense"),
    prune_start: int = typer.Option(0, "--prune-start", help="step of the (first) prune"),
    prune_end: int = typer.Option(None, "--prune-end",
                                  help="gradual: step reaching the final density (3/4 of run)"),
    prune_every: int = typer.Option(None, "--prune-every", help="gradual: steps between prunes"),
    init: Path = typer.Option(None, "--init", help="start from these weights (spruce.save)"),
    checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir",
                                        help="checkpoints, CSV logs and curves.png go here"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every",
                                         help="also checkpoint every N steps (0: epochs only)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint"),
    amp: bool = typer.Option(False, "--amp", help="mixed precision (GPU)"),
    amp_dtype: str = typer.Option("bf16", "--amp-dtype", help="bf16 | fp16"),
    seed: int = typer.Option(0, help="initialisation, data order, augmentation"),
    deterministic: bool = typer.Option(False, "--deterministic",
                                       help="deterministic kernels (bitwise reruns)"),
    threads: int = typer.Option(None, help="CPU threads per process"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    workers: int = typer.Option(0, help="data-loading processes per rank (file datasets)"),
    num_classes: int = typer.Option(None, "--num-classes", help="override the class count"),
    image_size: int = typer.Option(None, "--image-size", help="digits/imagenet input side"),
    tokenizer: Path = typer.Option(None, help="qqp: local Hugging Face tokenizer folder"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    output: Path = typer.Option(None, "--output", "-o", help="write the final model here"),
) -> None:
    """Train or fine-tune a model, pruning one-shot, gradually or during training."""
    from ..train import Interrupted, NonFiniteLoss, TrainConfig, train

    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:  # before any work: where the results go must be writable
        outputs_ok(files={"--output": output}, dirs={"--checkpoint-dir": checkpoint_dir})
    try:
        cfg = TrainConfig(
            model=model, data=data, dataset_format=dataset_format, epochs=epochs, steps=steps,
            eval_every=eval_every,
            batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
            warmup_steps=warmup_steps, weight_decay=weight_decay, pattern=pattern,
            density=density, block=parse_block(block), prune_mode=prune_mode,
            criterion=_criterion(criterion, criterion_opt), scope=scope, exclude=tuple(exclude),
            prune_start=prune_start, prune_end=prune_end, prune_every=prune_every,
            init=str(init) if init else None,
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
            checkpoint_every=checkpoint_every, resume=resume, amp=amp, amp_dtype=amp_dtype,
            seed=seed, deterministic=deterministic, threads=threads, device=device,
            workers=workers, num_classes=num_classes, image_size=image_size,
            tokenizer=str(tokenizer) if tokenizer else None, augment=augment,
            progress=progress, output=str(output) if output else None)
        result = train(cfg)
    except NonFiniteLoss as e:
        console.print(f"[bold red]stopped:[/] {e}")
        raise typer.Exit(3) from None
    except Interrupted as e:
        if main_rank:
            console.print(f"[yellow]stopped:[/] {e}")
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        if main_rank:
            console.print("[yellow]stopped at once[/] (second Ctrl-C); the newest checkpoint "
                          "written before is intact")
        raise typer.Exit(130) from None
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        if main_rank:
            fail(str(e))
        raise typer.Exit(2) from None
    if main_rank:
        console.print(_summary(result, cfg))


def _summary(result, cfg) -> Table:
    table = Table(title=f"{cfg.model} on {cfg.data}", title_justify="left", show_header=False)
    for k, v in result.metrics.items():
        if v is not None:
            table.add_row(k, f"{v:.4f}")
    table.add_row("density", f"{result.density:.4f}")
    table.add_row("steps", str(result.steps))
    table.add_row("processes", f"{result.processes} on {result.device}")
    table.add_row("train wall time", f"{result.wall_s:.1f} s")
    table.add_row("throughput", f"{result.samples_per_s:,.0f} samples/s")
    for label, value in (("output", result.output), ("checkpoint", result.checkpoint),
                         ("resumed from", result.resumed_from)):
        if value:
            table.add_row(label, value)
    for note in result.notes:
        table.add_row("note", note)
    return table


def main() -> None:
    """Entry point of ``python -m spruce.train``: the ``train`` command alone."""
    app = typer.Typer(add_completion=False)
    app.command()(train_cmd)
    app()
