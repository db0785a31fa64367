"""What every number is reported with: the machine, the versions, the threads, the date."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata

import torch

# The keys of ``environment()``, in order; results.json's schema requires them.
ENV_KEYS = ("device", "device_name", "torch", "spruce", "python", "threads", "cuda", "cudnn",
            "triton", "tf32", "date")


def environment(device: torch.device | str = "cpu", *, threads: int | None = None) -> dict:
    """A JSON-able description of where a measurement ran.

    ``cuda``/``cudnn``/``triton`` are None where absent; ``date`` is ISO 8601 UTC.
    """
    device = torch.device(device)
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "spruce": _spruce_version(),
        "python": platform.python_version(),
        "threads": threads or torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _package_version("triton"),
        # fp32 matrix products on TF32 tensor cores (cuBLAS, cuDNN); None off CUDA
        "tf32": ({"cublas": torch.backends.cuda.matmul.allow_tf32,
                  "cudnn": torch.backends.cudnn.allow_tf32} if device.type == "cuda" else None),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def device_name(device: torch.device | str) -> str:
    """``torch.cuda.get_device_name`` on CUDA; the CPU model from /proc/cpuinfo elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _spruce_version() -> str:
    from .. import __version__  # bench is the top layer: importing the package is fine
    return __version__


def _package_version(name: str) -> str | None:
    """The installed version, without importing the package (triton is slow to import)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
