"""Where klas finds data and models that are not part of the project.

`KLAS_SHARED` points at the shared folder (CIFAR-10 JPEG zips and the pretrained CIFAR ResNets);
it defaults to `../shared` relative to the current directory.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_dir", "cifar10_dir", "cifar_resnet_dir"]


def shared_dir() -> Path:
    """The shared folder: $KLAS_SHARED, or ../shared."""
    return Path(os.environ.get("KLAS_SHARED", "../shared")).expanduser().resolve()


def cifar10_dir() -> Path:
    """Folder with CIFAR-10 `train.zip` and `test.zip`."""
    return shared_dir() / "data" / "cifar10"


def cifar_resnet_dir() -> Path:
    """Folder with `resnet{20,32,44,56}.th`."""
    return shared_dir() / "models" / "cifar10-resnet"
