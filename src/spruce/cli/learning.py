"""``spruce learn-mask``: learn 2:4 masks over frozen weights with the training loop.

The weights come from ``--init`` (a ``spruce.save`` file of the dense model, e.g. written by
``spruce train``) and stay frozen; only the Gumbel-Softmax logits train, against the task
loss on ``--data``. The loop's progress bar, CSV logs and ``curves.png`` go to
``--checkpoint-dir``; the output file holds hard 2:4 WeightMasks (argmax of the logits).
Distillation without labels (MiniLM) is the API's: ``spruce.learned.fit_masks``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .checks import in_range, outputs_ok
from .common import console, fail


def learn_mask_cmd(
    model: str = typer.Argument(..., help="zoo name, tiny_cnn, or FILE.py:FN"),
    data: str = typer.Option("digits", help="dataset: digits or a dataset folder"),
    init: Path = typer.Option(None, help="dense weights to mask (a spruce.save file)"),
    epochs: int = typer.Option(5, help="passes over the training split"),
    batch_size: int = typer.Option(64, help="global batch size"),
    lr: float = typer.Option(0.05, help="AdamW learning rate of the mask logits"),
    tau: float = typer.Option(1.0, help="Gumbel-Softmax temperature (at the start)"),
    tau_end: float = typer.Option(0.1, help="temperature reached by --tau-schedule exp"),
    tau_schedule: str = typer.Option("constant", help="constant | exp"),
    hard: bool = typer.Option(False, help="straight-through: one-hot forward, soft backward"),
    mask_init: str = typer.Option("magnitude", help="logits from magnitude | random (paper)"),
    nm: str = typer.Option("2:4", help="N:M pattern (C(M, N) <= 70)"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="module-name glob left dense"),
    image_size: int = typer.Option(None, help="digits input side (default: the zoo geometry)"),
    seed: int = typer.Option(0, help="seed of data order and sampling"),
    checkpoint_dir: Path = typer.Option(None, help="logs, checkpoints and curves.png"),
    output: Path = typer.Option(..., "--output", "-o", help="masked model (.safetensors)"),
) -> None:
    """Learn N:M masks (weights frozen) and save the model with hard masks."""
    from ..learned import masks as _learned  # noqa: F401  (registers criterion "learned")
    from ..train import Interrupted, NonFiniteLoss, TrainConfig, train
    from ..train import setup

    outputs_ok(files={"--output": output}, dirs={"--checkpoint-dir": checkpoint_dir})

    criterion = {"name": "learned", "tau": tau, "tau_end": tau_end,
                 "tau_schedule": tau_schedule, "hard": hard, "init": mask_init, "seed": seed}
    try:
        in_range("--tau", tau, 0, lo_open=True)
        in_range("--tau-end", tau_end, 0, lo_open=True)
        cfg = TrainConfig(model=model, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                          optimizer="adamw", weight_decay=0.0, schedule="cosine",
                          pattern=nm, prune_mode="during", criterion=criterion,
                          exclude=tuple(exclude), image_size=image_size, seed=seed,
                          checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                          output=str(output), extra={"learn_mask": {"init": str(init)}})
        cfg = cfg.validated()
        criterion["anneal_steps"] = 0  # filled below once the run length is known
        dataset = setup.load_data(cfg)
        net = setup.make_model(cfg, dataset)
        if init:
            net = setup.load_init(net, str(init))
        else:
            console.print("[yellow]no --init: masking the freshly initialised weights[/]")
        net.requires_grad_(False)
        from ..data import steps_per_epoch
        criterion["anneal_steps"] = max(1, epochs * steps_per_epoch(len(dataset.train),
                                                                    batch_size))
        result = train(cfg, model=net, data=dataset)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    except NonFiniteLoss as e:
        console.print(f"[bold red]stopped:[/] {e}")
        raise typer.Exit(3) from None
    except Interrupted as e:
        console.print(f"[yellow]stopped:[/] {e}")
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        console.print("[yellow]stopped at once[/] (second Ctrl-C)")
        raise typer.Exit(130) from None
    console.print(f"learned {nm} masks: {result.steps} steps, {result.wall_s:.1f} s, density "
                  f"{result.density:.3f}, held-out {result.metrics}")
    console.print(f"wrote {output}")
