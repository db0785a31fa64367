"""The ``spruce`` command line: one typer app; each group of commands in its own file."""

from __future__ import annotations

import typer

from .bench import bench_layer, bench_model, characterize
from .compacting import compact_cmd
from .converting import backends_cmd, convert_cmd
from .planning import plan_show
from .learning import learn_mask_cmd
from .pruning import demo, info, prune_cmd
from .training import train_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Pattern-aware pruning and sparse inference that is actually fast.")
app.command("info")(info)
app.command("prune")(prune_cmd)
app.command("demo")(demo)
app.command("convert")(convert_cmd)
app.command("backends")(backends_cmd)
app.command("compact")(compact_cmd)
app.command("train")(train_cmd)
app.command("learn-mask")(learn_mask_cmd)
app.command("characterize")(characterize)

bench_app = typer.Typer(no_args_is_help=True, help="Time layers and models, dense and pruned.")
bench_app.command("layer")(bench_layer)
bench_app.command("model")(bench_model)
app.add_typer(bench_app, name="bench")

plan_app = typer.Typer(no_args_is_help=True, help="Plans of backend='auto' (per-layer choices).")
plan_app.command("show")(plan_show)
app.add_typer(plan_app, name="plan")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
