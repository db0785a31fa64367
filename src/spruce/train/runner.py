"""The training loop: steps, pruning events, evaluation, checkpoints, logs.

The position of a run is its global step ``s`` (optimizer updates done). Step ``s`` of
epoch ``e = s // steps_per_epoch`` loads batch ``s % steps_per_epoch`` of that epoch's
order (a pure function of seed and epoch), applies any pruning event scheduled for ``s``,
sets the learning rate ``lr_at(s)``, and updates. A checkpoint taken after step ``s``
holds everything else that changes (weights, masks, optimizer, RNG), so a resumed run
takes exactly the updates the uninterrupted one would have.

The run lasts ``cfg.steps`` steps when given (a step budget: the last epoch stops part
way, and the LR schedule spans exactly those steps), else ``epochs × steps_per_epoch``.
The loss is the cross-entropy of the model's logits, or an ``objective`` hook's; the
metrics are the classification ones, or an ``evaluator`` hook's (``hooks.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..api import save as save_model
from ..data import DataSplits, Split, TensorImages, steps_per_epoch, train_plan
from ..io import atomic_write_text
from ..prune import density_of
from . import checkpoint as ckpt
from . import hooks, setup
from .config import TrainConfig, config_hash, fingerprint
from .distributed import Dist, all_reduce_sum, barrier, broadcast_, gather_objects
from .evaluate import autocast, evaluate, headline, headline_key, logits_and_labels, to_device
from .logs import EVAL_FIELDS, TRAIN_FIELDS, CsvLog, ProgressBar, Throughput, plot_curves
from .schedule import lr_at
from .guard import Interrupted, OutputNotWritten, StopSignal, save_or_keep
from .sparsity import Sparsifier, broadcast_masks, effective_density
from .validate import check_state, first_nonfinite, loading, model_tensors


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the weights were not updated with it."""


@dataclass
class TrainResult:
    metrics: dict[str, float | None]  # held-out metrics of the final model
    steps: int  # optimizer steps of the whole run (resumed ones included)
    epochs: int
    density: float  # kept fraction of the prunable weights at the end
    wall_s: float  # training wall time, summed over resumptions
    samples_per_s: float  # mean training throughput (all ranks)
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch eval rows
    output: str | None = None
    checkpoint: str | None = None  # newest checkpoint folder
    resumed_from: str | None = None
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # DDP world size
    device: str = "cpu"  # of rank 0
    log: list[dict[str, Any]] = field(default_factory=list)  # training-log rows of this
    #       process (the CSV's: step, epoch, lr, loss, ...); a resumed run's start from there

    @property
    def accuracy(self) -> float:
        return headline(self.metrics)


class Trainer:
    def __init__(self, cfg: TrainConfig, d: Dist, model: nn.Module | None = None,
                 data: DataSplits | Split | None = None,
                 objective: hooks.Objective | None = None,
                 evaluator: hooks.Evaluator | None = None):
        self.cfg, self.d = cfg, d
        self.objective, self.hooks = objective, hooks.hook_names(objective, evaluator)
        self.custom_metrics = objective is not None or evaluator is not None
        self.notes = setup.set_determinism(cfg, d.device)
        setup.seed_everything(cfg.seed, d.rank)
        if isinstance(data, Split):
            data = DataSplits.of(data)
        self.data = data or setup.load_data(cfg)
        if objective is None and self.data.task == "custom":
            raise ValueError(f"data {self.data.name!r} has no labels for the cross-entropy; "
                             "pass objective=fn(net, batch) -> loss to train on it")
        self.spe = steps_per_epoch(len(self.data.train), cfg.batch_size)
        self.total = cfg.steps if cfg.steps is not None else cfg.epochs * self.spe
        self.model = model if model is not None else setup.make_model(cfg, self.data)
        if objective is None:
            setup.check_classes(self.model, self.data, cfg)
        self.evaluator = self._evaluator(evaluator)
        self.sparsifier = Sparsifier(cfg, self.total)
        self.dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else \
            (Path(cfg.output).parent if cfg.output else None)
        resume_path = self._resume_path()
        if cfg.init and resume_path is None:
            self.model = setup.load_init(self.model, cfg.init)
        self.trainables = self.sparsifier.prepare(self.model)
        self.trainables += setup.attached_trainables(self.model, self.trainables)
        self.model.to(d.device)
        self.optimizer = setup.make_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp and cfg.amp_dtype == "fp16" \
            and d.device.type == "cuda" else None
        self.step, self.wall_s, self.history, self.resumed_from = 0, 0.0, [], None
        self.samples, self.log_rows = 0, []
        if resume_path is not None:
            self._resume(resume_path)
        broadcast_masks(self.model, lambda t: broadcast_(t, d))
        self.net = setup.wrap_ddp(self.model, d)
        self.last_ckpt: Path | None = resume_path

    def _evaluator(self, given: hooks.Evaluator | None
                   ) -> Callable[[], dict[str, float | None]]:
        """The metrics of an evaluation: the hook's, the mean objective over the test split
        (objective, no evaluator), none (objective, no test split) or classification."""
        cfg, data = self.cfg, self.data
        if given is None and self.objective is not None and data.test is not None:
            given = hooks.mean_objective(self.objective, data.test, self.d,
                                         cfg.eval_batch_size, cfg.amp, cfg.amp_dtype)
        if given is not None:
            return lambda: hooks.run_evaluator(given, self.model)
        if self.objective is not None:  # no test split to measure anything on
            return lambda: {}
        return lambda: evaluate(self.model, data, self.d, cfg.eval_batch_size, cfg.amp,
                                cfg.amp_dtype)

    # -- resumption -------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        cfg = self.cfg
        if not cfg.checkpoint_dir:
            return None
        found = ckpt.latest(cfg.checkpoint_dir)
        if cfg.resume and found is None:
            raise FileNotFoundError(f"{cfg.checkpoint_dir}: no checkpoint to resume from; "
                                    "drop --resume to start a new run")
        if not cfg.resume and found is not None:
            raise FileExistsError(f"{cfg.checkpoint_dir} already holds checkpoints ({found.name});"
                                  " pass --resume to continue that run, or choose another "
                                  "--checkpoint-dir")
        return found if cfg.resume else None

    def _resume(self, path: Path) -> None:
        state = check_state(ckpt.read_state(path), path / "state.json", self.total)
        setup.check_resume(state, self.cfg, self.model, path)
        hooks.check_hooks(state, self.objective, path)
        ckpt.load(path, self.model, self.optimizer)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        with loading(path / "state.json", "RNG state"):
            ckpt.set_rng_state(rngs[self.d.rank] if self.d.rank < len(rngs) else rngs[0],
                               self.d.device)
        self.step, self.wall_s = int(state["step"]), float(state.get("wall_s", 0.0))
        self.history = state.get("history", [])
        self.samples = int(state.get("samples", 0))
        self.resumed_from = str(path)

    # -- files ------------------------------------------------------------------------------
    def _open_logs(self) -> tuple[CsvLog | None, CsvLog | None]:
        if not (self.d.is_main and self.dir):
            return None, None
        self.dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_stale(self.dir)
        at = self.step if self.resumed_from else None
        fields = None if self.custom_metrics else EVAL_FIELDS  # None: the first row's keys
        return (CsvLog(self.dir / "train_log.csv", TRAIN_FIELDS, at),
                CsvLog(self.dir / "eval_log.csv", fields, at))

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.step // self.spe, "steps_per_epoch": self.spe,
                "fingerprint": fingerprint(self.cfg), "config_hash": config_hash(self.cfg),
                "signature": setup.model_signature(self.model),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "wall_s": self.wall_s, "samples": self.samples, "history": self.history,
                "world_size": self.d.world,
                "hooks": self.hooks}

    def save_checkpoint(self) -> None:
        """Collective (gathers every rank's RNG state); only rank 0 writes. Weights that
        hold NaN/inf are never written: the last good checkpoint stays the newest."""
        bad = first_nonfinite(model_tensors(self.model))
        if bad is not None:
            kept = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else \
                "no checkpoint was written before"
            raise NonFiniteLoss(f"'{bad}' holds NaN or inf after step {self.step}; no "
                                f"checkpoint was written, {kept}. Lower --lr (now "
                                f"{self.cfg.lr:g}) or add --warmup-steps")
        rngs = gather_objects(ckpt.rng_state(self.d.device), self.d)
        if self.d.is_main and self.cfg.checkpoint_dir:
            self.last_ckpt = ckpt.save(self.cfg.checkpoint_dir, self.model, self.optimizer,
                                       {**self._state(), "rng": rngs},
                                       self.cfg.keep_checkpoints)
        barrier(self.d)

    # -- one step ---------------------------------------------------------------------------
    def _batches(self, epoch: int, start: int):
        cfg = self.cfg
        plan = train_plan(len(self.data.train), cfg.batch_size, cfg.seed, epoch, self.d.rank,
                          self.d.world, start)
        split = self.data.train
        if cfg.workers == 0 or isinstance(split, TensorImages):
            return (split.batch(idx, seeds) for idx, seeds in plan)
        return iter(torch.utils.data.DataLoader(_PlanItems(split), sampler=plan,
                                                batch_size=None, num_workers=cfg.workers))

    def train_step(self, batch: Any) -> float:
        cfg = self.cfg
        lr = lr_at(self.step, self.total, cfg.lr, cfg.schedule, cfg.warmup_steps,
                   cfg.lr_milestones, cfg.lr_gamma)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch, self.d.device)
        with autocast(self.d.device, cfg.amp, cfg.amp_dtype):
            loss = self._loss(batch)
        mean_loss = all_reduce_sum(loss.detach().clone(), self.d) / self.d.world
        value = float(mean_loss)
        if not math.isfinite(value):
            raise NonFiniteLoss(self._nan_message(value))
        total = loss + sum(t.regularizer() for t in self.trainables)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        for t in self.trainables:
            t.after_step()
        return value

    def _loss(self, batch: Any) -> torch.Tensor:
        if self.objective is not None:
            return hooks.objective_loss(self.objective, self.net, batch)
        logits, y = logits_and_labels(self.net, batch)
        return F.cross_entropy(logits.float(), y)

    def _nan_message(self, value: float) -> str:
        where = f"step {self.step} (epoch {self.step // self.spe}, batch {self.step % self.spe})"
        kept = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else \
            "no checkpoint was written before it"
        return (f"training loss is {value} at {where}; stopped before updating the weights "
                f"with it, {kept}. Lower --lr (now {self.cfg.lr:g}) or add --warmup-steps, "
                "then start again or --resume")

    def _prune_event(self) -> None:
        report = self.sparsifier.step(self.model, self.step)
        if report is not None:
            broadcast_masks(self.model, lambda t: broadcast_(t, self.d))

    # -- the run ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        train_log, eval_log = self._open_logs()
        bar = ProgressBar(self.total, self.step, self.cfg.progress and self.d.is_main)
        self.net.train()
        with StopSignal() as self.stop, bar:
            while self.step < self.total:
                self._epoch(bar, train_log, eval_log)
        self._prune_event()  # a gradual schedule may end at the very last step
        self.sparsifier.finalize(self.model)
        return self._finish(self.evaluator())

    def _epoch(self, bar: ProgressBar, train_log: CsvLog | None, eval_log: CsvLog | None):
        epoch, start = divmod(self.step, self.spe)
        meter, losses, t0 = Throughput(), [], time.perf_counter()
        speed, every, last = 0.0, self.cfg.eval_every, self.total
        for batch in self._batches(epoch, start):
            self._prune_event()
            losses.append(self.train_step(batch))
            self.step += 1
            self.samples += self.cfg.batch_size
            meter.add(self.cfg.batch_size)
            if self.step % self.cfg.log_every == 0 or self.step % self.spe == 0 or \
                    self.step == last:
                speed = meter.read()
                self._log_train(train_log, epoch, sum(losses) / len(losses), speed)
                losses = []
            bar.update(self.step, epoch, losses[-1] if losses else self._last_loss, speed)
            due_eval = every and (self.step % every == 0 or self.step == last)
            due_ckpt = self.cfg.checkpoint_every and \
                self.step % self.cfg.checkpoint_every == 0 and self.step % self.spe
            if due_eval:  # evaluation time does not count as training time
                self.wall_s += time.perf_counter() - t0
                self._evaluation(epoch, bar, eval_log)
                t0 = time.perf_counter()
            if due_ckpt:  # the checkpoint records the training time so far
                self.wall_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_checkpoint()
            if self._stop_requested():
                self.wall_s += time.perf_counter() - t0
                self._interrupt()
            if self.step == last:  # a step budget may end the run part way through an epoch
                break
        self.wall_s += time.perf_counter() - t0
        if not every:
            self._evaluation(epoch, bar, eval_log)
        self.save_checkpoint()
        if self.d.is_main and self.dir:
            key = self._headline if self.custom_metrics else None
            plot_curves(self.dir / "train_log.csv", self.dir / "eval_log.csv",
                        self.dir / "curves.png", f"{self.cfg.model} on {self.data.name}", key)

    def _stop_requested(self) -> bool:
        """Ctrl-C on any rank stops every rank after the same step."""
        flag = torch.tensor(float(self.stop.requested))
        return bool(all_reduce_sum(flag, self.d) > 0) if self.d.active else self.stop.requested

    def _interrupt(self) -> None:
        self.save_checkpoint()
        if self.cfg.checkpoint_dir:
            where = f"checkpoint {self.last_ckpt} written; continue with --resume"
        else:
            where = "nothing was saved (no --checkpoint-dir)"
        raise Interrupted(f"interrupted after step {self.step} of {self.total}: {where}",
                          str(self.last_ckpt) if self.cfg.checkpoint_dir else None)

    def _evaluation(self, epoch: int, bar: ProgressBar, eval_log: CsvLog | None) -> None:
        metrics = self.evaluator()
        self._headline = headline_key(metrics)
        row = {"step": self.step, "epoch": epoch, **metrics,
               "density": effective_density(self.model)}
        self.history.append(row)
        if eval_log or self.custom_metrics:
            if eval_log:
                eval_log.write(row)
            where = f"step {self.step}" if self.cfg.eval_every else f"epoch {epoch}"
            bar.note(f"{where}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if v is not None))

    _last_loss = float("nan")
    _headline: str | None = None  # the metric the curve shows (evaluate.headline_key)

    def _log_train(self, log: CsvLog | None, epoch: int, loss: float, speed: float) -> None:
        self._last_loss = loss
        row = {"step": self.step, "epoch": epoch, "loss": loss,
               "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": speed,
               "density": effective_density(self.model)}
        self.log_rows.append(row)
        if log:
            log.write(row)

    def _finish(self, metrics: dict[str, float | None]) -> TrainResult:
        result = TrainResult(metrics, self.step, math.ceil(self.total / self.spe),
                             density_of(self.model), self.wall_s,
                             self.samples / max(self.wall_s, 1e-9), self.history,
                             self.cfg.output, str(self.last_ckpt or "") or None,
                             self.resumed_from, self.notes + self.data.notes, self.d.world,
                             str(self.d.device), self.log_rows)
        failed = None
        if self.d.is_main:
            extra = {"train": {"config": self.cfg.to_dict(), "metrics": metrics,
                               "steps": self.step, "density": result.density}}
            if self.cfg.output:  # if it cannot go there, it goes to the checkpoint folder
                try:
                    save_or_keep(lambda p: save_model(self.model, p, extra=extra),
                                 self.cfg.output, self.cfg.checkpoint_dir)
                except OutputNotWritten as e:
                    failed = e
            if self.dir and (failed is None or self.cfg.checkpoint_dir):
                body = {k: v for k, v in asdict(result).items() if k != "log"}
                atomic_write_text(self.dir / "results.json",  # the log rows are in the CSV
                                  json.dumps({**body, "config": self.cfg.to_dict()},
                                             indent=1, default=str))
        barrier(self.d)
        if failed is not None:
            raise failed
        return result


class _PlanItems(torch.utils.data.Dataset):
    """DataLoader adapter: the sampler yields ``(indices, seeds)``, one whole batch each."""

    def __init__(self, split):
        self.split = split

    def __getitem__(self, entry):
        return self.split.batch(*entry)

    def __len__(self) -> int:
        return len(self.split)
