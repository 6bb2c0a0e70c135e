"""Settings sections: frozen dataclasses whose fields are declared once, with their checks.

A section is both a part of a run config (``finetune:`` in YAML) and the settings object the stage
function takes (klas.stitching.finetune.finetune takes a FinetuneSettings, which shares the
`finetune` section's declarations). Each setting is declared with `setting()`: its default, help,
allowed range or choices, and the first pipeline stage whose outputs it changes (None: it changes
no result, only speed, file layout or which methods run). From that one declaration come

- the check: every section checks its settings when it is built, from a config file, a command
  line or Python keywords alike (`Section.__post_init__`), and says which setting was wrong;
- the CLI options (klas.pipeline.config.add_setting_option) and the stage fingerprints
  (klas.pipeline.config.stage_fingerprint);
- `result_settings()`: the settings a stage's stored result depends on, from which the
  fingerprints of checkpoints and recovery results are derived.

`TrainingBudget` is the one budget of a training (adaptation, supernet finetuning, the recovery
test): steps, batch, AdamW, linear warm-up then cosine decay, and the precision of its steps.

This module is torch-free (the optimizer is built on demand), so that `klas --help` starts fast.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from klas.errors import ConfigError

__all__ = ["setting", "Section", "TrainingBudget", "PRECISIONS", "parse_section", "check_value", "check_number", "choices_of",
           "describe_range", "is_section", "type_hints", "SECTION_STAGE", "MAX_INTEGER"]

PRECISIONS = ("auto", "float32", "bfloat16")  # of a training's steps (klas.precision)
MAX_INTEGER = 2**63  # larger integers are refused before they are compared with a float (which would overflow)
SECTION_STAGE = object()  # a setting's stage is its section's


def setting(default, help: str, *, low=None, high=None, open_low: bool = False, open_high: bool = False,
            choices=None, stage=SECTION_STAGE, when_moved: bool = False) -> Any:
    """Declares one setting: its default, help, allowed range [low, high] (an end excluded when
    `open_low` / `open_high`) or choices (a tuple, or a function returning one: a registry's names),
    and the first stage whose outputs it changes (None: it changes no result).

    when_moved: a setting added after results were first stored enters `result_values` only when
    moved from its default, so that results stored before it existed stay usable."""
    meta = {"help": help, "low": low, "high": high, "open_low": open_low, "open_high": open_high, "choices": choices,
            "stage": stage, "when_moved": when_moved}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def type_hints(cls) -> dict[str, Any]:
    """The resolved annotations of a section class."""
    return typing.get_type_hints(cls)


def is_section(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def _declared(f: dataclasses.Field) -> bool:
    return "help" in f.metadata  # declared with setting(); other fields (paths, run facts) are not settings


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True)
class Section:
    """Base of every settings section. NAME: the section's key in a run config (in messages);
    STAGE: the stage its settings first change; FINGERPRINT_BY_SETTING: whether it enters a stage
    fingerprint setting by setting ("select.tau", as select does) or as one mapping."""

    NAME: ClassVar[str] = ""
    STAGE: ClassVar[str | None] = None
    FINGERPRINT_BY_SETTING: ClassVar[bool] = False

    def __post_init__(self):
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            if not _declared(f) or is_section(hints[f.name]):
                continue  # a nested section checked itself when it was built
            path = f"{self.NAME}.{f.name}" if self.NAME else f.name
            object.__setattr__(self, f.name, check_value(getattr(self, f.name), hints[f.name], f.metadata, path))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def stage_of(cls, f: dataclasses.Field) -> str | None:
        stage = f.metadata.get("stage", SECTION_STAGE)
        return cls.STAGE if stage is SECTION_STAGE else stage

    @classmethod
    def result_settings(cls) -> list[str]:
        """The declared settings that change a result (their stage is not None)."""
        return [f.name for f in dataclasses.fields(cls) if _declared(f) and cls.stage_of(f) is not None]

    def result_values(self) -> dict:
        """{name: value} of `result_settings()`; a `when_moved` setting only when not at its default."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return {name: getattr(self, name) for name in self.result_settings()
                if not (fields[name].metadata["when_moved"] and getattr(self, name) == _default(fields[name]))}

    @classmethod
    def sharing(cls, other: "Section", **more):
        """An instance of `cls` taking every setting it shares with `other` (another section), plus `more`."""
        own = {f.name for f in dataclasses.fields(cls)}
        shared = {f.name: getattr(other, f.name) for f in dataclasses.fields(other) if f.name in own and _declared(f)}
        return cls(**{**shared, **more})


@dataclass(frozen=True)
class TrainingBudget(Section):
    """The budget of a training: `steps` steps of `batch_size` images, AdamW at peak `lr` with
    `weight_decay`, a linear warm-up over `warmup_fraction` of the steps, then a cosine decay to 0;
    the forward of each step in `precision` (klas.precision)."""
    steps: int = setting(0, "training steps", low=0, high=10**9)
    batch_size: int = setting(64, "images per step", low=1, high=65536)
    lr: float = setting(1e-4, "peak learning rate (AdamW, cosine)", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.05, "AdamW weight decay", low=0.0, high=100.0)
    warmup_fraction: float = setting(0.05, "part of the steps spent warming up", low=0.0, high=1.0)
    precision: str = setting("auto", "the training steps' forward: auto (bfloat16 autocast on CUDA, float32 on the "
                                     "CPU), float32, or bfloat16 autocast on every device", choices=PRECISIONS,
                             when_moved=True)

    def lr_factor(self, step: int) -> float:
        """The learning rate of `step` as a fraction of the peak."""
        warmup = int(self.warmup_fraction * self.steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def optimizer(self, params):
        """(torch.optim.AdamW over `params`, its LambdaLR schedule of `lr_factor`), stepped once a step."""
        import torch

        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)


# ---- checking one value against its declaration ----------------------------------------------------

def choices_of(meta: dict) -> tuple | None:
    choices = meta.get("choices")
    return choices() if callable(choices) else choices


def describe_range(meta: dict) -> str:
    lo = "" if meta["low"] is None else ("(" if meta["open_low"] else "[") + f"{meta['low']}"
    hi = "" if meta["high"] is None else f"{meta['high']}" + (")" if meta.get("open_high") else "]")
    return f"{lo or '(-inf'}, {hi or 'inf)'}"


def check_number(value, meta: dict, path: str):
    """`value` if finite and within the setting's range; ConfigError otherwise."""
    low, high = meta["low"], meta["high"]
    if isinstance(value, int) and abs(value) > MAX_INTEGER:  # checked before any float conversion overflows
        raise ConfigError(f"{path}: must be a finite number in {describe_range(meta)}, got an integer of "
                          f"{len(str(abs(value)))} digits")
    if (not math.isfinite(value) or (high is not None and (value > high or (value == high and meta.get("open_high"))))
            or (low is not None and (value < low or (value == low and meta["open_low"])))):
        raise ConfigError(f"{path}: must be a finite number in {describe_range(meta)}, got {value!r}")
    return value


def _scalar(value, hint, meta: dict, path: str):
    """One value of type `hint` (int, float, bool or str), checked against the setting's range or choices."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(check_number(value, meta, path))
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return check_number(value, meta, path)
    choices = choices_of(meta)
    if isinstance(value, bool) and choices is not None and {"on", "off"} <= set(choices):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as true / false
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: must be one of {list(choices)}, got {value!r}")
    return value


def check_value(value, hint, meta: dict, path: str):
    """A setting's value checked against its declared type: a scalar, `X | None`, `int | str`
    (an integer or one of the named choices) or a list (a comma-separated string is split)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        item = args[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if item is int:
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if isinstance(value, list):
                value = [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path}: expected a list of {'integers' if item is int else 'strings'}, got {value!r}")
        values = [_scalar(v, item, meta, path) for v in value]
        if len(set(values)) != len(values):
            raise ConfigError(f"{path}: lists {sorted({v for v in values if values.count(v) > 1})} more than once; "
                              "list each once")
        return values
    if type(None) in args:  # X | None
        (want,) = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, want):
            raise ConfigError(f"{path}: expected {want.__name__} or null, got {value!r}")
        return _scalar(value, want, meta, path)
    if set(args) == {int, str}:  # an integer in range, or one of the named choices ("auto")
        if isinstance(value, int) and not isinstance(value, bool):
            if not (meta["low"] <= value <= meta["high"]):
                raise ConfigError(f"{path}: must be {' or '.join(choices_of(meta))} or an integer in "
                                  f"{describe_range(meta)}, got {value!r}")
            return value
        if value not in choices_of(meta):
            raise ConfigError(f"{path}: must be {' or '.join(choices_of(meta))} or an integer in "
                              f"{describe_range(meta)}, got {value!r}")
        return value
    return _scalar(value, hint, meta, path)


def parse_section(cls, raw, path: str):
    """An instance of section `cls` from a parsed mapping (defaults for what it leaves out); unknown
    keys and bad values are ConfigErrors naming the key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    hints = type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if _declared(f) or is_section(hints[f.name])}
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise ConfigError(f"{path + '.' if path else ''}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    # nested sections parsed here; every setting checked (and its text converted) once, when `cls` is built
    return cls(**{key: parse_section(hints[key], value, f"{path}.{key}" if path else key) if is_section(hints[key])
                  else value for key, value in raw.items()})
