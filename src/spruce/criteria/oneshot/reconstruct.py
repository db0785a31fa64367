"""Least-squares reconstruction of the kept weights under masks already chosen.

After masks come from anywhere (magnitude, learned and hardened, coupled structures), the
kept weights of each masked layer are re-fitted to its dense outputs on calibration inputs
that come through the layers reconstructed before it (:func:`spruce.calibrate.sequential`):

- a mask that keeps the same columns in every row (``group``; a consumer of coupled
  channels or heads) gets the exact least-squares weights ``Ŵ_S = W H[:, S] H[S, S]⁻¹``;
- a mask that keeps whole rows (``channel``) has nothing to refit: the layer is left as is;
- any other mask (element, N:M, block, learned) gets, per row, the exact least-squares
  weights on that row's kept columns (``method="exact"``, the default: one ``|S_r|``-sized
  solve per row, in chunks of bounded memory) or the SparseGPT OBS sweep with the mask
  fixed (``method="sweep"``: cheaper, each pruned weight's error goes only to the kept
  weights of the columns after it).

Masks are never changed; the file and the report say the weights were.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...calibrate import sequential
from ...errors import SpruceError
from ...masks import get_mask, mask_module, masked_layers, original_weight
from ...view import globs_of, matches, view_of
from .hessian import dense_target, factors, least_squares, rowwise_least_squares


METHODS = ("exact", "sweep")


def _fixed_mask_solver(damp: float, blocksize: int, method: str):  # noqa: C901
    from .sparsegpt import obs_sweep

    def solve(name, layer, masked, stats):
        # the dense weights: the pruned ones' contribution is what the kept ones absorb
        view = view_of(layer, original_weight(layer)).detach().float()
        mask = get_mask(layer).to(view.device)
        if bool((mask.all(1) | ~mask.any(1)).all()) and stats.cross is None:
            return mask, None  # whole rows: nothing in the layer can take over an output
        view = dense_target(view, stats, damp, name)
        f = factors(stats, damp, name)
        if bool((mask == mask[:1]).all()):
            return mask, least_squares(view, f.h, mask[0])
        if method == "exact":
            return mask, rowwise_least_squares(view, f.h, mask)
        return obs_sweep(view, f.u, lambda a, b, w, d: mask[:, a:b], 1 << 30, blocksize)
    return solve


def reconstruct_layers(model: nn.Module, layers: dict[str, nn.Module],
                       calibration: Iterable | None, damp: float = 0.01,
                       blocksize: int = 128, method: str = "exact", targets: str = "pruned"
                       ) -> list[str]:
    """Refit the kept weights of ``layers`` (each carrying a spruce mask) in forward order;
    returns the names of the layers whose weights changed."""
    from ...learned.masks import learned_module

    for name, layer in layers.items():
        if learned_module(layer) is not None:
            raise SpruceError("the layer carries a learned mask; harden it first "
                              "(spruce.learned.harden(model)) so the mask is fixed", layer=name)
        if mask_module(layer) is None:
            raise SpruceError("the layer has no spruce mask to reconstruct under; prune it "
                              "first or leave it out", layer=name)
    if method not in METHODS:
        raise SpruceError(f"reconstruction method must be one of {', '.join(METHODS)}; got "
                          f"{method!r}", field="method")
    done = sequential(model, layers, calibration, _fixed_mask_solver(damp, blocksize, method),
                      "reconstruct", gram=True, keep_weights=True,
                      dense_targets=targets == "dense")
    for name in done.changed:
        mask_module(layers[name]).info["weights_changed"] = True
    return done.changed


def reconstruct(model: nn.Module, calibration: Iterable, exclude: str | Iterable[str] = (),
                damp: float = 0.01, blocksize: int = 128, method: str = "exact",
                targets: str = "pruned") -> list[str]:
    """Least-squares reconstruction of every masked layer's kept weights (see the module
    docstring); ``calibration`` as for ``spruce.prune``; ``targets="dense"`` fits the dense
    model's outputs (see ``spruce.criteria.oneshot.sparsegpt.TARGETS``). Returns the layers
    changed."""
    globs = globs_of(exclude)
    layers = {n: m for n, m in masked_layers(model).items() if not matches(n, globs)}
    if not layers:
        raise SpruceError("the model carries no spruce mask: prune it (or harden its learned "
                          "masks) before reconstructing")
    with torch.no_grad():
        return reconstruct_layers(model, layers, calibration, damp, blocksize, method, targets)
