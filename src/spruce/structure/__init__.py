"""Structure: the dependency graph of a traced model and its coupled groups.

    groups = spruce.structure.coupled_groups_of(model, example_input)
    print(groups[0])   # members (parameter, axis, role) and units of one group

:mod:`.graph` traces the model (``torch.export``) and follows channel ids through every op
(:mod:`.ops`, :mod:`.layers`: one handler per op in a registry); :mod:`.groups` turns the
classes into :class:`CoupledGroup` records; :mod:`.prune` is ``scope="coupled"``;
:mod:`.apply` slices parameters and fixes module settings for ``spruce.compact``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .graph import Dependencies, build
from .groups import CoupledGroup, coupled_groups


def coupled_groups_of(model: nn.Module, example_input: Any) -> list[CoupledGroup]:
    """Every coupled group of ``model`` traced on ``example_input``."""
    return coupled_groups(build(model, example_input))


__all__ = ["CoupledGroup", "Dependencies", "build", "coupled_groups", "coupled_groups_of"]
