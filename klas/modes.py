"""A speed setting that holds for a block of code or a whole process: one of a few named modes,
set by `with mode.set(...)` (klas run sets the config's value around its work), else read from an
environment variable, else the first mode. klas.compiling (`compile`) and klas.memory_format
(`memory_format`) are two.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

__all__ = ["ProcessMode"]


class ProcessMode:
    """One setting's mode. choices: the modes, the default first; what: the words naming a mode in
    errors ("compile mode"); setting: the config's name for it; env: the environment variable."""

    def __init__(self, choices: tuple[str, ...], *, what: str, setting: str, env: str):
        self.choices, self.what, self.setting, self.env = choices, what, setting, env
        self._value: contextvars.ContextVar[str | None] = contextvars.ContextVar(f"klas_{setting}", default=None)

    def checked(self, mode: str, where: str) -> str:
        """`mode` if it is one of the choices; UsageError naming `where` it came from otherwise."""
        if mode not in self.choices:
            from klas.errors import UsageError

            raise UsageError(f"{where}: {self.what} {mode!r} is not one of {', '.join(self.choices)}")
        return mode

    def current(self) -> str:
        """The mode in force: the innermost `set`, else the environment variable, else the default."""
        mode = self._value.get()
        if mode is not None:
            return mode
        default = self.choices[0]
        return self.checked(os.environ.get(self.env, default).strip().lower() or default, self.env)

    @contextlib.contextmanager
    def set(self, mode: str) -> Iterator[None]:
        """Sets the mode inside the block."""
        token = self._value.set(self.checked(mode, self.setting))
        try:
            yield
        finally:
            self._value.reset(token)
