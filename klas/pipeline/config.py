"""Run configuration (`klas run CONFIG.yaml`): typed sections that validate once.

A config is YAML with the sections below; anything left out takes the default shown. Each setting
is declared once, with its default, its allowed values and its help, and with the first pipeline
stage whose outputs it changes. From those declarations come:
- validation (`validate_config`): unknown keys, wrong types and values out of range are errors that
  name the key path (``finetune.stepz: unknown key``);
- the CLI's options for the same settings (`add_setting_option`: default, type, choices and help);
- the stage fingerprints (`stage_fingerprint`): a stage's outputs depend on every setting of its own
  stage and of the stages before it, so a changed setting redoes exactly the stages it affects.

Strings may use ``${KLAS_SHARED}`` (the shared folder, klas.settings) and other environment
variables. Relative paths are relative to the working directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from klas.compiling import COMPILE_MODES
from klas.memory_format import MEMORY_FORMATS
from klas.errors import ConfigError
from klas.evaluation.recovery_settings import RecoverySection
from klas.limits import FLOPS_UNIT, MAX_BUCKETS
from klas.sections import (Section, check_number, check_value, choices_of, is_section, parse_section, setting,
                           type_hints)
from klas.scoring.settings import ProbesSection, ScoreSection
from klas.selection.options import SelectSection
from klas.stitching.settings import PROTOCOLS, AdaptSection, FinetuneSection

__all__ = ["RunConfig", "DataSection", "AdaptSection", "ExtractSection", "ProbesSection", "ScoreSection",
           "SelectSection", "FinetuneSection", "EvaluateSection", "RecoverySection", "DistributedSection",
           "STAGES", "PROTOCOLS", "MAX_BUCKETS", "load_config", "validate_config", "stage_fingerprint",
           "stage_settings", "add_setting_option", "setting_type", "number_type", "ConfigError"]

# the pipeline's stages in order; a stage's outputs depend on its own settings and every earlier stage's
STAGES = ("adapt", "extract", "probes", "score", "select", "finetune", "evaluate")
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 100_000  # a config has a few dozen; YAML aliases can make a small file unbounded
MAX_KEY_DEPTH = 8  # levels of a dotted --set key (a config is two deep)


@dataclass(frozen=True)
class DataSection(Section):
    NAME: ClassVar[str] = "data"
    STAGE: ClassVar[str | None] = "adapt"
    root: str = setting("", "the image folder or zip root (train and test sets)")
    val_fraction: float = setting(0.1, "part of the training set held out as D_v", low=0.0, high=1.0, open_low=True)
    train_limit: int | None = setting(None, "use N training images, drawn at random with the seed", low=1, high=10**9)
    val_limit: int | None = setting(None, "use N D_v images", low=1, high=10**9)
    test_limit: int | None = setting(None, "use N test images", low=1, high=10**9)


@dataclass(frozen=True)
class ExtractSection(Section):
    NAME: ClassVar[str] = "extract"
    STAGE: ClassVar[str | None] = "extract"
    dtype: str = setting("float16", "cache dtype of the pooled features", choices=("float16", "bfloat16", "float32"))
    batch_size: int = setting(256, "images per forward", low=1, high=65536)
    shard_rows: int = setting(4096, "images per cache shard", low=1, high=10**7, stage=None)
    num_workers: int = setting(0, "DataLoader worker processes", low=0, high=256, stage=None)


@dataclass(frozen=True)
class EvaluateSection(Section):
    NAME: ClassVar[str] = "evaluate"
    STAGE: ClassVar[str | None] = "evaluate"
    batch_size: int = setting(500, "images per forward", low=1, high=65536)
    split: str = setting("test", "the split every route is evaluated on", choices=("test", "val"))


@dataclass(frozen=True)
class DistributedSection(Section):
    NAME: ClassVar[str] = "distributed"
    timeout_s: float = setting(1800.0, "under torchrun: how long a rank waits for the others", low=0.0,
                               high=10**7, open_low=True)


@dataclass(frozen=True)
class RunConfig(Section):
    """The whole run. Top-level settings first; then one section per stage."""
    STAGE: ClassVar[str | None] = None
    name: str = setting("klas-run", "the run's name (report titles)", stage=None)
    out: str = setting("runs/klas-run", "output folder", stage=None)
    seed: int = setting(0, "seed of the D_t / D_v split, route schedule and initialisation", low=0,
                        high=2**63 - 1, stage="adapt")
    seeds: list[int] = setting([], "several seeds: the comparison once per seed, figures as mean and 95% "
                                   "interval", low=0, high=2**63 - 1, stage=None)
    device: str = setting("auto", "torch device: auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda, "
                                  "cuda:1", stage=None)
    compile: str = setting("auto", "torch.compile for the blocks and stitching layers: auto (inference stages "
                                   "with enough images; training stays eager), on (every stage), off", choices=COMPILE_MODES,
                           stage=None)
    memory_format: str = setting("auto", "how the models' convolution weights and feature maps are stored while a "
                                         "stage runs: auto (channels last on the CPU, contiguous on CUDA), "
                                         "channels_last, contiguous; values equal within float rounding",
                                 choices=MEMORY_FORMATS, stage=None)
    anchors: list[str] = setting([], "anchor specs (two or more)", stage="adapt")
    data: DataSection = field(default_factory=DataSection)
    adapt: AdaptSection = field(default_factory=AdaptSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    probes: ProbesSection = field(default_factory=ProbesSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    select: SelectSection = field(default_factory=SelectSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    distributed: DistributedSection = field(default_factory=DistributedSection)


# ---- reading a config ------------------------------------------------------------------------------

def _count_nodes(raw: Any, limit: int) -> int:
    """Containers and values in a parsed document, counting shared (aliased) ones at every use;
    stops past `limit` (iterative, so an alias bomb neither recurses nor runs long)."""
    seen, stack = 0, [raw]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list):
            stack.extend(item)
    return seen


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        from klas.settings import shared_dir

        value = value.replace("${KLAS_SHARED}", str(shared_dir()))
        return re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def validate_config(raw: Any) -> RunConfig:
    """The typed config (defaults filled in) from a parsed document, or a RunConfig given as is
    (checked again); ConfigError naming the bad key."""
    if isinstance(raw, RunConfig):
        raw = raw.to_json()
    if raw is None:
        raw = {}
    if _count_nodes(raw, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"the config has more than {MAX_CONFIG_NODES} values (YAML aliases expanding?); write "
                          "the settings out plainly")
    cfg = parse_section(RunConfig, _expand(raw), "")
    if len(cfg.anchors) < 2:
        raise ConfigError("anchors: list at least two anchor specs (e.g. cifar-resnet:20, cifar-resnet:56)")
    if not cfg.data.root:
        raise ConfigError("data.root: the image folder or zip is required")
    if not cfg.finetune.protocols:
        raise ConfigError("finetune.protocols: list one or more distinct protocols (snnet, stitches-only)")
    if cfg.recovery.delta_from_noise and cfg.recovery.repeats < 2:
        raise ConfigError("recovery.delta_from_noise: the noise needs recovery.repeats of 2 or more "
                          f"(got {cfg.recovery.repeats}); set repeats or give delta instead")
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Reads and validates a YAML config; `overrides` ({"select.method": "klas", …}) applied first."""
    import yaml

    from klas.reading import regular_file

    path = regular_file(path, error=ConfigError, fix="give the path of a YAML config (see configs/)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes; a config holds settings only")
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path} cannot be read ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        if dotted.count(".") >= MAX_KEY_DEPTH:
            raise ConfigError(f"--set {dotted[:60]}...: a key has at most {MAX_KEY_DEPTH} levels (section.setting)")
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {p} is not a section")
        node[last] = value
    return validate_config(raw)


# ---- stage fingerprints ----------------------------------------------------------------------------

def stage_settings(stage: str) -> list[str]:
    """The dotted names of the settings whose change redoes `stage` (its own and every earlier stage's)."""
    upto = set(STAGES[:STAGES.index(stage) + 1])
    names = []
    for top in dataclasses.fields(RunConfig):
        hint = type_hints(RunConfig)[top.name]
        if is_section(hint):
            names += [f"{top.name}.{f.name}" for f in dataclasses.fields(hint) if hint.stage_of(f) in upto]
        elif RunConfig.stage_of(top) in upto:
            names.append(top.name)
    return names


def stage_fingerprint(cfg: RunConfig, stage: str, method: str | None = None, method_settings: dict | None = None) -> str:
    """Hash of the settings a stage's outputs depend on (plus the method, for per-method stages, and
    the settings only that method reads, when it has any: other methods' fingerprints stay as they were).

    Top-level settings enter by name, sections as one mapping of their result-changing settings
    (by setting where the section says so; a `when_moved` setting only when not at its default, so
    that outputs stored before it existed keep their fingerprints); a section with adaptation off (0 steps) does not
    enter, so that a config without adaptation keeps the fingerprints of one without the section. From
    scoring on, the unit of the FLOPs the outputs record enters too (klas.limits.FLOPS_UNIT)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (have {', '.join(STAGES)})")
    picked: dict[str, Any] = {}
    for name in stage_settings(stage):
        top, _, key = name.partition(".")
        if not key:
            picked[top] = getattr(cfg, top)
            continue
        section = getattr(cfg, top)
        if top == "adapt" and cfg.adapt.steps == 0:
            continue
        if key not in section.result_values():  # a setting added later enters only when moved (`when_moved`)
            continue
        if section.FINGERPRINT_BY_SETTING:
            picked[name] = getattr(section, key)
        else:
            picked.setdefault(top, {})[key] = getattr(section, key)
    if STAGES.index(stage) >= STAGES.index("score"):  # outputs from here on record FLOPs in this unit
        picked["flops_unit"] = FLOPS_UNIT
    if method is not None:
        picked["method"] = method
    if method_settings:
        picked["method_settings"] = method_settings
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# ---- the CLI's options for the same settings -------------------------------------------------------

def setting_type(section_cls, name: str):
    """An argparse type for one setting: parses the text and checks it as the config does."""
    f = {f.name: f for f in dataclasses.fields(section_cls)}[name]
    hint = type_hints(section_cls)[name]
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    want = base[0] if len(base) == 1 else hint

    def parse(text: str):
        if want in (int, float):
            value = _parse_number(text, want)
        elif set(typing.get_args(want)) == {int, str}:
            value = int(text) if text.lstrip("-").isdigit() else text
        else:
            value = text
        try:
            return check_value(value, hint, f.metadata, "")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).lstrip(": ")) from None

    parse.__name__ = getattr(want, "__name__", "value")
    return parse


def _parse_number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def number_type(kind: type, *, low=None, high=None, open_low: bool = False, open_high: bool = False):
    """An argparse type for a command-line number that is not a config setting, checked by the same
    rule as the settings: finite, within [low, high] (an end excluded when asked)."""
    meta = {"low": low, "high": high, "open_low": open_low, "open_high": open_high}

    def parse(text: str):
        try:
            return check_number(_parse_number(text, kind), meta, "")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).lstrip(": ")) from None

    parse.__name__ = kind.__name__
    return parse


def add_setting_option(parser: argparse.ArgumentParser, section_cls, name: str, flag: str | None = None,
                       **overrides) -> None:
    """Adds `--NAME` for one config setting: its default, type, choices and help come from the config."""
    f = {f.name: f for f in dataclasses.fields(section_cls)}[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    flag = flag or "--" + name.replace("_", "-")
    hint = type_hints(section_cls)[name]
    kwargs = {"default": default, "help": f.metadata["help"]}
    if hint is bool:
        raise TypeError(f"{section_cls.__name__}.{name} is a switch: add it with action='store_true'")
    choices = choices_of(f.metadata)
    if choices is not None and hint is str:
        kwargs["choices"] = list(choices)
    else:
        kwargs["type"] = setting_type(section_cls, name)
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)
