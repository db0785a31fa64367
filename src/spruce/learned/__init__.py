"""Learned N:M masks over frozen weights (Gumbel-Softmax, Danhofer 2024) and the
channel-permutation baseline (Pool & Yu 2021).

    from spruce.learned import LearnedSpec, attach_learned, fit_masks, harden
    attach_learned(model, LearnedSpec(tau=1.0, init="magnitude"))   # weights frozen
    fit_masks(model, objective, data, steps=300)   # only logits train, in spruce.train
    harden(model)                     # exact 2:4 WeightMasks: save/load/semi24 as usual

``objective(net, batch) -> loss`` (e.g. distillation to the dense model's outputs, which
``data`` carries) is the training loop's hook; with labels, ``spruce.train`` trains
learned masks directly (``prune_mode="during", criterion="learned"``).

Importing this package registers ``criterion="learned"``.
"""

from .fit import FitResult, check_frozen, fit_masks, flips, mask_parameters
from .masks import (Learned, LearnedNMMask, LearnedSpec, attach_learned, gumbel_softmax, harden,
                    init_logits, learned_layers, learned_module, nm_table)
from .objectives import OBJECTIVES, get_objective, mean_pool
from .permute import (InputPermuted, efficacy, permute_producer_consumer, search_permutation)
from .schedule import tau_at

__all__ = ["OBJECTIVES", "FitResult", "InputPermuted", "Learned", "LearnedNMMask",
           "LearnedSpec", "attach_learned", "check_frozen", "efficacy", "fit_masks", "flips",
           "get_objective", "gumbel_softmax", "harden", "init_logits", "learned_layers",
           "learned_module", "mean_pool", "mask_parameters", "nm_table",
           "permute_producer_consumer", "search_permutation", "tau_at"]
