"""spruce's own error type.

Every error spruce raises about bad input — a damaged or hostile file, a model it cannot
serve, an option out of range — is a :class:`SpruceError`. It subclasses ``ValueError`` so
code that caught ``ValueError`` keeps working. The message names what was wrong (the file,
the layer, the field, the value) and the fix.
"""

from __future__ import annotations

import os


class SpruceError(ValueError):
    """Bad input to spruce: the message names the file/layer/field, the value and the fix."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 layer: str | None = None, field: str | None = None):
        where = []
        if path is not None:
            where.append(f"{path}")
        if layer is not None:
            where.append(f"layer '{layer}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)
        self.path = None if path is None else str(path)
        self.layer = layer
        self.field = field
