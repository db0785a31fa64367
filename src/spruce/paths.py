"""Where a command will write, checked before it does any work.

A long run that fails at its last line because ``-o`` names a folder, a read-only place
or a path under a regular file loses everything it computed. Every command that writes
calls :func:`check_output_file` (one file: a model, a plan) or :func:`check_output_dir`
(a folder of results, checkpoints) first. Both create the missing parent folders and
prove the place writable by creating and removing a probe file there, which also catches
read-only mounts and permissions that ``os.access`` misreads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SpruceError


def _error(message: str, target: Path, option: str) -> SpruceError:
    """The message names the option and the path already; they are kept as attributes."""
    err = SpruceError(message)
    err.path, err.field = str(target), option
    return err


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _check_folder(folder: Path, target: Path, option: str) -> None:
    """``folder`` exists and takes new files, or can be created (nothing is created)."""
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise _error(f"{option} {target} lies under {base}, which is a file, not a "
                     "folder; choose a path in a folder", target, option)
    try:
        fd, probe = tempfile.mkstemp(prefix=".spruce-probe-", dir=base)
    except OSError as e:
        what = f"the folder {folder} is not writable" if base == folder else \
            f"cannot create the folder {folder}: {base} is not writable"
        raise _error(f"{option}: {what} ({e.strerror or e}); choose a writable place",
                     target, option) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, option: str = "--output") -> Path:
    """``path`` as a :class:`Path` once a file can be written there.

    Refused with a :class:`SpruceError` naming ``option``: an existing folder or other
    non-regular file at ``path``, a parent that is a file, a parent that cannot be made,
    a folder that is not writable.
    """
    target = Path(path)
    if str(path).endswith(os.sep) or target.is_dir():
        raise _error(f"{option} {target} is a folder; give a file name, e.g. "
                     f"{target / 'model.safetensors'}", target, option)
    if target.exists() and not target.is_file():
        raise _error(f"{option} {target} exists and is not a regular file (a pipe or "
                     "device?); give a file name", target, option)
    _check_folder(target.parent, target, option)
    if target.exists() and not os.access(target, os.W_OK):
        raise _error(f"{option} {target} exists and is read-only; remove it or choose "
                     "another name", target, option)
    return target


def check_output_dir(path: str | os.PathLike, option: str = "--output") -> Path:
    """``path`` as a :class:`Path` once it is, or can be made, a writable folder.

    Refused with a :class:`SpruceError` naming ``option``: an existing file at ``path``,
    a parent that is a file, a folder that cannot be made or is not writable.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise _error(f"{option} {target} is a file; give a folder", target, option)
    _check_folder(target, target, option)
    return target
