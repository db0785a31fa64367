"""What keeps a long run safe: one run per checkpoint folder, and a clean Ctrl-C.

- :class:`FolderLock`: a run holds ``CKPT/.lock`` (its PID and host) while it lives. A
  second run on the same folder — a ``--resume`` started while the first still trains —
  fails at once, naming the folder and the PID. A lock left by a process that is gone
  (killed, machine rebooted) is taken over.
- :class:`StopSignal`: the first Ctrl-C (SIGINT) asks the loop to stop after the step in
  progress, write a checkpoint and exit with a message; a second Ctrl-C exits at once.
- :func:`save_or_keep`: a final model that cannot be written where asked is written to
  the checkpoint folder (or a temporary one) and the error says where.
"""

from __future__ import annotations

import os
import tempfile
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import SpruceError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_owner(file: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = file.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _age_s(file: Path) -> float:
    try:
        return time.time() - file.stat().st_mtime
    except OSError:
        return float("inf")


class FolderLock:
    """``with FolderLock(folder):`` — the folder is this process's until the block ends."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.file = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is removed, then the creation is tried again
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_owner()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return
        raise SpruceError(f"checkpoint folder {self.folder}: could not take the lock "
                          f"{self.file}; another run keeps taking it")

    def _check_owner(self) -> None:
        """Raise if a live process holds the lock; remove it if its process is gone."""
        pid, host = _read_owner(self.file)
        here = socket.gethostname()
        if pid is None and _age_s(self.file) < 5.0:  # being written by a run starting now
            raise SpruceError(f"checkpoint folder {self.folder} is being taken by another "
                              f"run starting now (lock {self.file}); choose another "
                              "--checkpoint-dir")
        if pid is not None and (host != here or _alive(pid)):
            where = f"process {pid}" + ("" if host == here else f" on host {host}")
            raise SpruceError(
                f"checkpoint folder {self.folder} is in use by {where} (lock {self.file}); "
                "wait for that run to end or stop it, or choose another --checkpoint-dir"
                + ("" if host == here else "; if that run is over, delete the lock file"))
        try:  # the owner is gone (or the file is unreadable): take the folder over
            self.file.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            pid, _ = _read_owner(self.file)
            if pid == os.getpid():
                self.file.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class StopSignal:
    """Within ``with StopSignal() as stop:``, the first SIGINT sets ``stop.requested``
    (the loop checks it between steps); the second raises ``KeyboardInterrupt`` at once.
    Outside the main thread (where signals cannot be handled) it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and writing a checkpoint; press Ctrl-C again to "
              "quit at once", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class Interrupted(RuntimeError):
    """Ctrl-C stopped the run between two steps; ``checkpoint`` is the folder written then
    (None without a checkpoint folder)."""

    def __init__(self, message: str, checkpoint: str | None):
        super().__init__(message)
        self.checkpoint = checkpoint


class OutputNotWritten(SpruceError):
    """The final model could not be written where asked; ``kept_at`` is where it is."""

    def __init__(self, message: str, kept_at: str):
        super().__init__(message)
        self.kept_at = kept_at


def save_or_keep(save: Callable[[str | Path], object], output: str,
                 keep_dir: str | os.PathLike | None) -> None:
    """``save(output)``; if that fails, ``save`` into ``keep_dir`` (the checkpoint folder,
    else a new temporary folder) and raise :class:`OutputNotWritten` saying where it is."""
    try:
        save(output)
        return
    except (OSError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
    folder = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="spruce-final-"))
    kept = folder / ("final-" + Path(output).name if Path(output).name else "final.safetensors")
    save(kept)
    raise OutputNotWritten(f"could not write the final model to {output} ({reason}); it is "
                           f"kept at {kept}: copy it from there", str(kept))
