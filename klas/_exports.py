"""Lazy public names for the stage packages: `klas.scoring.kl_matrix` imports klas.scoring.kl
on first use, so importing a package (or the `klas` command) loads only what is used.

A public name may be the name of the package's own submodule (`klas.selection.select`, the
function, lives in the module `klas.selection.select`). Importing that submodule makes Python bind
the module to the package's attribute, which would hide the function, so such names are data
descriptors on the package's module type: `from klas.selection import select` is the function
always (so is `import klas.selection.select as m`, which reads the same attribute), while
`from klas.selection.select import X` and `sys.modules` still reach the module.
"""
from __future__ import annotations

import importlib
import sys
import types


class _FunctionOverModule:
    """A package attribute that is the function `name` of its submodule `name`, however often the
    import system binds the submodule to it."""

    def __init__(self, package: str, name: str):
        self.package, self.name = package, name

    def __get__(self, obj, owner=None):
        return getattr(importlib.import_module(f"{self.package}.{self.name}"), self.name)

    def __set__(self, obj, value):  # the import system binding the submodule: keep it out of sight
        obj.__dict__[f"_submodule_{self.name}"] = value


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__, __all__) for a package whose names live in its modules:
    `exports` maps each public name to the module (within `package`) that defines it."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(exports)

    shadowed = [name for name, module in exports.items() if name == module]
    if shadowed:
        module = sys.modules[package]
        kind = type(f"{type(module).__name__}WithExports", (type(module),),
                    {name: _FunctionOverModule(package, name) for name in shadowed})
        module.__class__ = kind
        for name in shadowed:  # a submodule imported before this ran is bound already
            if name in module.__dict__ and isinstance(module.__dict__[name], types.ModuleType):
                module.__dict__[f"_submodule_{name}"] = module.__dict__.pop(name)
    return __getattr__, __dir__, sorted(exports)
