"""What spruce accepts from a file: one place that checks every header and tensor it reads.

A saved model is untrusted input. Every file spruce writes is safetensors (no pickle) with a
JSON header under the metadata key ``"spruce"``; this package checks, before anything is
allocated or built:

- the header follows the current schema (:mod:`.schema`: a format version, a kind, one
  record per layer, model-level fields), field by field, with types and ranges
  (:class:`Fields`); headers of older layouts are upgraded first (:mod:`.upgrade`);
- the stored tensors' shapes and dtypes, read from the file's index without loading them
  (:class:`Stored`, :func:`read_stored` — the one function that opens a file's header),
  against the header and against the architecture;
- after loading: masks are boolean (or exactly 0/1), sit on prunable layers and follow their
  declared pattern(s); float tensors are finite; index tensors are in range and ordered
  (:func:`check_index`, :func:`check_csr`);
- plan files of ``backend="auto"`` (:func:`check_plan`).

Every error is a :class:`~spruce.errors.SpruceError` naming the file, the layer, the field
and the fix. A file never names code to run: a model given as ``FILE.py:FN`` is recorded
in a header, but only the user's ``--model`` runs it (see ``spruce.cli.common``).
"""

from .fields import FLOAT_NAMES, HEADER_KEY, INDEX_DTYPES, MAX_DIM, ST_DTYPES, Fields
from .plans import check_plan
from .reading import Stored, layer_key, parse_header, read_stored
from .schema import FORMAT_VERSION, KINDS, check_header, layer_records
from .tensors import (
    SUBSET_CLOSED,
    check_csr,
    check_finite,
    check_index,
    check_mask,
    check_mask_values,
)
from .upgrade import UPGRADES, upgrade

__all__ = ["FLOAT_NAMES", "FORMAT_VERSION", "HEADER_KEY", "INDEX_DTYPES", "KINDS", "MAX_DIM",
           "ST_DTYPES", "SUBSET_CLOSED", "UPGRADES", "Fields", "Stored", "check_csr",
           "check_finite", "check_header", "check_index", "check_mask", "check_mask_values",
           "check_plan", "layer_key", "layer_records", "parse_header", "read_stored",
           "upgrade"]
