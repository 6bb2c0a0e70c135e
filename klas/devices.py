"""Which torch device and kernels a command may use here: checked before any work starts, so that
`--device cuda` on a machine without a GPU is one line, not a traceback mid-run."""
from __future__ import annotations

import os

from klas.errors import UsageError

__all__ = ["check_device", "triton_importable", "triton_interpreted", "triton_runs_on", "triton_usable_here"]


def check_device(name: str) -> str:
    """`name` if torch can run on it here ("auto": the first CUDA GPU when one is visible, else the
    CPU); UsageError saying what is available otherwise."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"

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


def triton_importable() -> bool:
    """True when the `triton` package imports here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """True under TRITON_INTERPRET=1: the kernels run on CPU tensors through Triton's interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device) -> bool:
    """True when the Triton kernels can run on tensors of `device` (a torch.device or its name):
    a CUDA device with Triton importable, or any device under the interpreter."""
    import torch

    if not triton_importable():
        return False
    return triton_interpreted() or torch.device(device).type == "cuda"


def triton_usable_here() -> bool:
    """True when the Triton kernels can run on some device of this machine."""
    import torch

    return triton_importable() and (triton_interpreted() or torch.cuda.is_available())
