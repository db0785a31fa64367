"""How a training run prunes: one-shot, gradual (cubic schedule), or during training.

- ``oneshot``: ``spruce.prune`` at ``prune_start`` to the final density; the remaining steps
  fine-tune with the mask fixed.
- ``gradual``: ``spruce.prune`` at each step of :func:`prune_steps` to
  :func:`density_at` of that step. Re-pruning intersects masks, so masks only shrink, and
  every call keeps an exact count, so the final density is reached exactly at
  ``prune_end``. N:M patterns step N down from M (e.g. 4:4 → 3:4 → 2:4), since N:M fixes
  the density at N/M.
- ``during``: the criterion's trainable masks (SR-STE, block gates, DST) are attached
  before training and turned into ordinary WeightMasks by :meth:`Sparsifier.finalize`.

Every pruning event is a function of the step alone, so a resumed run repeats none and
skips none. Under DDP, rank 0's masks are broadcast so every rank holds the same masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..criteria import during_training as during  # registers sr-ste, block-gate, dst
from ..criteria import get_criterion
from ..criteria.during_training import TrainableMask
from ..errors import SpruceError
from ..masks import attach, get_mask, mask_module, masked_layers, original_weight
from ..patterns import get_pattern
from ..prune import PruneReport, prune
from ..view import prunable_layers, taps, view_shape
from .config import TrainConfig
from .schedule import density_at, prune_steps


class Sparsifier:
    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg, self.total = cfg, total_steps
        self.mode = cfg.prune_mode if cfg.pattern else None
        self.pattern = get_pattern(cfg.pattern, **self._pattern_kwargs(cfg.pattern)) \
            if cfg.pattern else None
        self.criterion = get_criterion(cfg.criterion) if cfg.pattern else None
        self.events: dict[int, float] = {}
        if self.mode is not None:
            self._check_mode()
        if self.mode in ("oneshot", "gradual"):
            self.events = self._schedule()

    def _pattern_kwargs(self, name: str) -> dict[str, Any]:
        return {"block": self.cfg.block} if str(name).lower() == "block" else {}

    def _check_mode(self) -> None:
        is_during = isinstance(self.criterion, during.DuringTraining)
        if self.mode == "during" and not is_during:
            raise ValueError(f"prune_mode 'during' needs a during-training criterion (sr-ste "
                             f"for N:M, block-gate, dst); got {self.criterion.name!r}")
        if self.mode != "during" and is_during:
            raise ValueError(f"criterion {self.criterion.name!r} learns its mask during "
                             "training; use prune_mode 'during'")
        if is_during and self.pattern.name not in self.criterion.accepts:
            raise ValueError(f"criterion {self.criterion.name!r} works with the "
                             f"{'/'.join(self.criterion.accepts)} pattern(s), not "
                             f"{self.pattern.name!r}")
        fixed = self.pattern.fixed_density()
        if fixed is None and self.mode != "during" and self.cfg.density is None:
            raise ValueError(f"pattern {self.cfg.pattern!r} needs a density (fraction kept)")

    def _schedule(self) -> dict[int, float]:
        cfg, start = self.cfg, self.cfg.prune_start
        final = self.final_density()
        if self.mode == "oneshot":
            if start > self.total:
                raise SpruceError(
                    f"--prune-start {start} is after the run's last step ({self.total}): the "
                    f"model would train dense and never be pruned; use a prune_start in "
                    f"[0, {self.total}] or more --steps/--epochs")
            return {start: final}
        end = cfg.prune_end if cfg.prune_end is not None else max(start, (3 * self.total) // 4)
        if not (0 <= start <= end <= self.total):
            raise SpruceError(f"gradual pruning needs 0 <= prune_start ({start}) <= prune_end "
                             f"({end}) <= the run's {self.total} steps")
        every = cfg.prune_every or max(1, (end - start) // 20)
        return {s: density_at(s, start, end, 1.0, final) for s in prune_steps(start, end, every)}

    def final_density(self) -> float:
        fixed = self.pattern.fixed_density()
        return fixed if fixed is not None else float(self.cfg.density)

    # -- one-shot and gradual --------------------------------------------------------
    def step(self, model: nn.Module, step: int) -> PruneReport | None:
        """Prune if ``step`` is an event of the schedule (before that step's update)."""
        if step not in self.events or self.events[step] >= 1.0:
            return None
        report = self._prune(model, self.events[step])
        if self.mode == "gradual" and step == max(self.events):
            _single_spec(model, self.pattern.spec(), self.mode)
        return report

    def _prune(self, model: nn.Module, density: float) -> PruneReport:
        cfg, spec = self.cfg, self.pattern.spec()
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        if "n" in spec:  # N:M: step N down towards its final value
            n = max(spec["n"], min(spec["m"], math.ceil(density * spec["m"] - 1e-9)))
            return prune(model, "vector", None, self.criterion, cfg.scope, cfg.exclude,
                         **{**kwargs, "n": n})
        return prune(model, spec["name"], density, self.criterion, cfg.scope, cfg.exclude,
                     **kwargs)

    def prepare(self, model: nn.Module) -> list[during.TrainableMask]:
        """Before the optimizer and DDP see the model: an all-ones WeightMask on every layer
        the run will prune (later prunings only shrink those masks: registering a
        parametrization mid-run would swap the weights' autograd nodes under DDP's hooks),
        and the criterion's trainable masks after them in ``during`` mode."""
        if self.mode is None:
            return []
        layers, _ = prunable_layers(model, self.cfg.exclude)
        for name, layer in layers.items():
            try:
                self.pattern.for_view(taps(layer)).check_shape(view_shape(layer))
            except ValueError as e:
                raise ValueError(f"layer '{name}': {e}") from None
            if mask_module(layer) is None:
                attach(layer, torch.ones(view_shape(layer), dtype=torch.bool), {})
        return self._attach_during(layers) if self.mode == "during" else []

    # -- during training --------------------------------------------------------------
    def _attach_during(self, layers: dict[str, nn.Module]) -> list[during.TrainableMask]:
        """Put the criterion's trainable mask after the WeightMask of every layer."""
        spec, out = self.pattern.spec(), []
        for layer in layers.values():
            shape = view_shape(layer)
            ids, n_groups = self.pattern.for_view(taps(layer)).group_ids(shape)
            param = self.criterion.parametrization(tuple(layer.weight.shape), spec, ids,
                                                   n_groups)
            param.to(original_weight(layer).device)  # made from shapes, on the CPU
            torch.nn.utils.parametrize.register_parametrization(layer, "weight", param)
            out.append(param)
        return out

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        """Turn every trainable mask into a fixed WeightMask with the pattern's structure."""
        if self.mode != "during":
            return
        info = {"patterns": [self.pattern.spec()], "criterion": self.criterion.spec(),
                "scope": "during", "target": None}
        for layer in masked_layers(model).values():
            plist = layer.parametrizations.weight
            idx = [i for i, p in enumerate(plist) if isinstance(p, during.TrainableMask)]
            if not idx:
                continue
            trainable = plist[idx[0]]
            w_in = plist[0](plist.original)  # the weight as the trainable mask sees it
            keep = trainable.keep_mask(w_in)
            plist.original.copy_(trainable.bake(plist.original))
            del plist[idx[0]]
            attach(layer, keep.reshape(keep.shape[0], -1), info)


def _single_spec(model: nn.Module, spec: dict[str, Any], mode: str) -> None:
    """After the last event the masks have the final pattern's structure: record it once
    (instead of one entry per event), so loaders check the structure."""
    for layer in masked_layers(model).values():
        info = mask_module(layer).info
        info["patterns"] = [spec]
        info["schedule"] = mode


@torch.no_grad()
def broadcast_masks(model: nn.Module, broadcast) -> None:
    """Make every rank's masks rank 0's (``broadcast(tensor)`` is in place, from rank 0)."""
    for layer in masked_layers(model).values():
        mask = mask_module(layer).mask
        flags = mask.to(torch.uint8)
        broadcast(flags)
        mask.copy_(flags.bool())


def effective_density(model: nn.Module) -> float:
    """Kept fraction of the prunable weights, counting what trainable masks keep now
    (before :meth:`Sparsifier.finalize` turns them into fixed masks). It never runs a
    mask's forward, which may sample (learned masks): logging must not move the RNG."""
    kept = total = 0
    for layer in prunable_layers(model)[0].values():
        n = original_weight(layer).numel()  # not layer.weight: a Gumbel mask would draw noise
        total += n
        trainable = _trainable_mask(layer)
        m = get_mask(layer)
        if m is None and trainable is None:
            kept += n
            continue
        plist = layer.parametrizations.weight
        if m is None:  # a trainable mask alone, attached by the caller (e.g. attach_learned)
            m = trainable.keep_mask(plist.original)
        elif trainable is not None:
            m = trainable.keep_mask(plist[0](plist.original)) & plist[0].mask
        kept += int(m.sum())
    return kept / max(1, total)


def _trainable_mask(layer: nn.Module) -> TrainableMask | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, TrainableMask)),
                None)
