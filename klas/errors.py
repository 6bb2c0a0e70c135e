"""Exceptions that klas raises for bad input and damaged files.

Every message says what was wrong and what to do about it.
"""

__all__ = ["KlasError", "CacheError", "AnchorError", "DataError", "UsageError", "ConfigError"]


class KlasError(Exception):
    """Base class of every error klas raises on purpose."""


class CacheError(KlasError):
    """An activation cache is missing, damaged, or does not match what was asked for.

    The native reader (klas._C) raises this same class.
    """


class AnchorError(KlasError):
    """An anchor spec, checkpoint or model cannot be loaded or used as asked."""


class DataError(KlasError):
    """A dataset folder or zip is empty, unreadable, or does not fit the anchor."""


class UsageError(KlasError, ValueError):
    """An option or argument given a value it cannot take (also a ValueError, for API callers)."""


class ConfigError(KlasError, ValueError):
    """A run config (YAML or --set) has an unknown key, a wrong type, or a value out of range."""
