"""Which torch device and kernels a command may use here: checked before any work starts, so that
`--device cuda` on a machine without a GPU is one line, not a traceback mid-run."""
from __future__ import annotations

import os

from klas.errors import UsageError

__all__ = ["check_device", "triton_usable_here"]


def check_device(name: str) -> str:
    """`name` if torch can run on it here; UsageError saying what is available otherwise."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
        return name
    raise UsageError(f"--device {name}: klas runs on cpu or cuda devices")


def triton_usable_here() -> bool:
    """True when the Triton kernels can run: a CUDA GPU and Triton, or the CPU interpreter
    (TRITON_INTERPRET=1, used by the tests)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    import torch

    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
