"""Lazy public names for the stage packages: `klas.scoring.kl_matrix` imports klas.scoring.kl
on first use, so importing a package (or the `klas` command) loads only what is used."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__, __all__) for a package whose names live in its modules:
    `exports` maps each public name to the module (within `package`) that defines it."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
