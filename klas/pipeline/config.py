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
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from klas.errors import ConfigError
from klas.limits import CHAIN_RULE_NAMES, FLOPS_RANGE_RULES, FLOPS_UNIT, MAX_BUCKETS, MAX_TEMPERATURE, MIN_TEMPERATURE

__all__ = ["RunConfig", "DataSection", "AdaptSection", "ExtractSection", "ProbesSection", "ScoreSection",
           "SelectSection", "FinetuneSection", "EvaluateSection", "RecoverySection", "DistributedSection",
           "STAGES", "PROTOCOLS", "MAX_BUCKETS", "load_config", "validate_config", "stage_fingerprint",
           "stage_settings", "add_setting_option", "setting_type", "number_type", "ConfigError"]

# the pipeline's stages in order; a stage's outputs depend on its own settings and every earlier stage's
STAGES = ("adapt", "extract", "probes", "score", "select", "finetune", "evaluate")
# finetuning protocols: SN-Net's (anchors and stitching layers train), or the stitching layers alone
# (anchors frozen and identical in every supernet, so that only the selection differs)
PROTOCOLS = {"snnet": False, "stitches-only": True}
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 100_000  # a config has a few dozen; YAML aliases can make a small file unbounded
MAX_INTEGER = 2**63  # larger integers are refused before they are compared with a float (which would overflow)
MAX_KEY_DEPTH = 8  # levels of a dotted --set key (a config is two deep)
_SECTION_STAGE = object()  # a setting's stage is its section's


def setting(default, help: str, *, low=None, high=None, open_low: bool = False, open_high: bool = False,
            choices=None, stage=_SECTION_STAGE) -> Any:
    """Declares one setting: its default, help, allowed range [low, high] (an end excluded when
    `open_low` / `open_high`) or choices, and the first stage whose outputs it changes (None: it
    changes no result, only speed, file layout or which methods run)."""
    meta = {"help": help, "low": low, "high": high, "open_low": open_low, "open_high": open_high, "choices": choices,
            "stage": stage}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class _Section:
    """Base of the config sections: the stage its settings first change (None: no stage's outputs)."""

    STAGE: ClassVar[str | None] = None
    # True: the section enters a fingerprint setting by setting ("select.tau"), as select does, whose
    # other settings choose which methods run; False: as one mapping ("extract": {...})
    FINGERPRINT_BY_SETTING: ClassVar[bool] = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataSection(_Section):
    STAGE: ClassVar[str | None] = "adapt"
    root: str = setting("", "the image folder or zip root (train and test sets)")
    val_fraction: float = setting(0.1, "part of the training set held out as D_v", low=0.0, high=1.0, open_low=True)
    train_limit: int | None = setting(None, "use N training images, drawn at random with the seed", low=1, high=10**9)
    val_limit: int | None = setting(None, "use N D_v images", low=1, high=10**9)
    test_limit: int | None = setting(None, "use N test images", low=1, high=10**9)


@dataclass(frozen=True)
class _TrainingBudget(_Section):
    """The budget of a training (adaptation, finetuning): steps, batch, AdamW with a cosine schedule."""
    steps: int = setting(0, "training steps", low=0, high=10**9)
    batch_size: int = setting(64, "images per step", low=1, high=65536)
    lr: float = setting(1e-4, "peak learning rate (AdamW, cosine)", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.05, "AdamW weight decay", low=0.0, high=100.0)
    warmup_fraction: float = setting(0.05, "part of the steps spent warming up", low=0.0, high=1.0)

    def settings(self, *, seed: int, device: str, **more):
        """klas.stitching.finetune.FinetuneSettings of this budget (`more`: the other settings)."""
        from klas.stitching.finetune import FinetuneSettings

        return FinetuneSettings(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                weight_decay=self.weight_decay, warmup_fraction=self.warmup_fraction, seed=seed,
                                device=device, **more)


@dataclass(frozen=True)
class AdaptSection(_TrainingBudget):
    """Anchor adaptation before extraction (0 steps: off): each anchor finetuned alone on D_t."""
    STAGE: ClassVar[str | None] = "adapt"
    steps: int = setting(0, "steps of adaptation per anchor (0: off)", low=0, high=10**8)


@dataclass(frozen=True)
class ExtractSection(_Section):
    STAGE: ClassVar[str | None] = "extract"
    dtype: str = setting("float16", "cache dtype of the pooled features", choices=("float16", "bfloat16", "float32"))
    batch_size: int = setting(256, "images per forward", low=1, high=65536)
    shard_rows: int = setting(4096, "images per cache shard", low=1, high=10**7, stage=None)
    num_workers: int = setting(0, "DataLoader worker processes", low=0, high=256, stage=None)


@dataclass(frozen=True)
class ProbesSection(_Section):
    STAGE: ClassVar[str | None] = "probes"
    epochs: int = setting(4, "passes over D_t", low=1, high=10**4)
    batch_size: int = setting(256, "rows per probe step", low=1, high=10**6)
    lr: float = setting(1e-2, "learning rate", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.0, "weight decay", low=0.0, high=100.0)
    labels: str = setting("true", "dataset labels, or label-free: each anchor's own predictions",
                          choices=("true", "pseudo"))
    standardise: bool = setting(True, "train on features standardised on D_t (folded into the saved weights)")


@dataclass(frozen=True)
class ScoreSection(_Section):
    STAGE: ClassVar[str | None] = "score"
    temperature: float = setting(1.0, "softmax temperature of Θ", low=MIN_TEMPERATURE, high=MAX_TEMPERATURE)
    floor: float = setting(1e-6, "floor on Σ in Γ = Ω / Σ", low=0.0, high=1e6, open_low=True)
    backend: str = setting("auto", "Θ backend", choices=lambda: _theta_backends())


def _theta_backends() -> tuple[str, ...]:
    from klas.limits import BACKENDS

    return tuple(b for b in BACKENDS if b != "reference")  # the float64 oracle is for tests, not runs


def _method_names() -> tuple[str, ...]:
    from klas.selection.methods import method_names

    return method_names()


def _recovery_method_names() -> tuple[str, ...]:
    from klas.selection.methods import recovery_method_names

    return recovery_method_names()


@dataclass(frozen=True)
class SelectSection(_Section):
    STAGE: ClassVar[str | None] = "select"
    FINGERPRINT_BY_SETTING: ClassVar[bool] = True
    method: str = setting("klas", "the selection method of a single-method run", choices=_method_names, stage=None)
    compare: list[str] = setting([], "methods run with equal budgets into one report", choices=_method_names,
                                 stage=None)
    tau: float = setting(0.05, "tolerance: relative (τ_b = (1 + τ)·min Γ) or absolute", low=0.0, high=1e6,
                         open_low=True)
    tau_mode: str = setting("relative", "how τ is applied", choices=("relative", "absolute"))
    buckets: int | str = setting("auto", "FLOPs buckets per anchor pair, or auto (coverage rule)", low=1,
                                 high=MAX_BUCKETS, choices=("auto",))
    chain_rule: str = setting("minimax", "anchor chain rule", choices=CHAIN_RULE_NAMES)
    flops_range: str = setting("exclude", "configurations outside the pair's FLOPs range: not candidates "
                                          "(exclude), or in the end buckets", choices=FLOPS_RANGE_RULES)
    snnet_stage_skips: bool = setting(True, "SN-Net baseline: skip the stages SN-Net's code skips")
    # klas-budget's own settings: they enter that method's fingerprints alone (run.method_settings)
    budget_min_route_steps: int = setting(100, "klas-budget: the fewest finetuning steps a route should get (the "
                                               "recovery test's per-stitch budget)", low=1, high=10**9, stage=None)
    budget_max_error_ratio: float = setting(2.0, "klas-budget: a stitch gets room only if its predicted D_v error "
                                                 "is at most this many times the cheaper anchor's", low=1.0,
                                            high=1e6, stage=None)
    predict_images: int = setting(1000, "klas-budget: D_v images each least-squares stitch is counted on (0: all)",
                                  low=0, high=10**9, stage=None)


@dataclass(frozen=True)
class FinetuneSection(_TrainingBudget):
    STAGE: ClassVar[str | None] = "finetune"
    steps: int = setting(1000, "supernet steps (the same budget for every method)", low=0, high=10**9)
    protocols: list[str] = setting(["snnet", "stitches-only"], "finetuning protocols of every comparison",
                                   choices=tuple(PROTOCOLS), stage=None)
    freeze_bn: bool = setting(True, "keep the anchors' BatchNorm statistics")
    anchors: str = setting("chain", "anchors that are routes: those on the chain, or all", choices=("chain", "all"))
    checkpoint_every: int = setting(100, "steps between checkpoints", low=1, high=10**9, stage=None)
    calibration_images: int = setting(128, "images for the stitching layers' least-squares init", low=1,
                                      high=10**6)
    num_workers: int = setting(0, "DataLoader worker processes", low=0, high=256, stage=None)

    def settings(self, *, seed: int, device: str, stitches_only: bool = False, **more):
        """klas.stitching.finetune.FinetuneSettings of a supernet's finetuning under one protocol."""
        return super().settings(seed=seed, device=device, stitches_only=stitches_only, freeze_bn=self.freeze_bn,
                                checkpoint_every=self.checkpoint_every, num_workers=self.num_workers, **more)


@dataclass(frozen=True)
class EvaluateSection(_Section):
    STAGE: ClassVar[str | None] = "evaluate"
    batch_size: int = setting(500, "images per forward", low=1, high=65536)
    split: str = setting("test", "the split every route is evaluated on", choices=("test", "val"))


@dataclass(frozen=True)
class RecoverySection(_Section):
    """klas recovery: every configuration of one pair trained alone (the stitching layer); each
    configuration's result file carries its own fingerprint (klas.evaluation.recovery)."""
    steps: int = setting(200, "steps per configuration (stitching layer alone)", low=0, high=10**7)
    batch_size: int = setting(64, "images per step", low=1, high=65536)
    lr: float = setting(1e-3, "learning rate", low=0.0, high=100.0, open_low=True)
    weight_decay: float = setting(0.0, "weight decay", low=0.0, high=100.0)
    calibration_images: int = setting(128, "images for the least-squares init", low=1, high=10**6)
    delta: float = setting(0.5, "points: the good set's tolerance", low=0.0, high=100.0)
    repeats: int = setting(1, "trainings of every configuration, each with its own seed (calibration draw, "
                              "batch order); from 2 the report measures the seed-to-seed noise", low=1, high=100)
    delta_from_noise: bool = setting(False, "set δ from the measured noise (its delta_95; needs repeats >= 2) "
                                            "instead of delta")
    random_seeds: int = setting(20, "draws of the random method", low=1, high=10**4)
    test_limit: int | None = setting(None, "a seeded subset of the test set", low=1, high=10**9)
    methods: list[str] = setting(["klas", "kl-ls", "snnet-nearest", "cka", "mse", "ce", "dm", "random"],
                                 "methods scored against the good set", choices=_recovery_method_names)


@dataclass(frozen=True)
class DistributedSection(_Section):
    timeout_s: float = setting(1800.0, "under torchrun: how long a rank waits for the others", low=0.0,
                               high=10**7, open_low=True)


@dataclass(frozen=True)
class RunConfig(_Section):
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

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# ---- reading and checking values -------------------------------------------------------------------

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, _Section)


def _choices(meta: dict) -> tuple | None:
    choices = meta.get("choices")
    return choices() if callable(choices) else choices


def _describe_range(meta: dict) -> str:
    lo = "" if meta["low"] is None else ("(" if meta["open_low"] else "[") + f"{meta['low']}"
    hi = "" if meta["high"] is None else f"{meta['high']}" + (")" if meta.get("open_high") else "]")
    return f"{lo or '(-inf'}, {hi or 'inf)'}"


def _check_number(value, meta: dict, path: str):
    """`value` if finite and within the setting's range; ConfigError otherwise."""
    low, high = meta["low"], meta["high"]
    if isinstance(value, int) and abs(value) > MAX_INTEGER:  # checked before any float conversion overflows
        raise ConfigError(f"{path}: must be a finite number in {_describe_range(meta)}, got an integer of "
                          f"{len(str(abs(value)))} digits")
    if (not math.isfinite(value) or (high is not None and (value > high or (value == high and meta.get("open_high"))))
            or (low is not None and (value < low or (value == low and meta["open_low"])))):
        raise ConfigError(f"{path}: must be a finite number in {_describe_range(meta)}, got {value!r}")
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
        return float(_check_number(value, meta, path))
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return _check_number(value, meta, path)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    choices = _choices(meta)
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: must be one of {list(choices)}, got {value!r}")
    return value


def _value(value, hint, meta: dict, path: str):
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
                raise ConfigError(f"{path}: must be {' or '.join(_choices(meta))} or an integer in "
                                  f"{_describe_range(meta)}, got {value!r}")
            return value
        if value not in _choices(meta):
            raise ConfigError(f"{path}: must be {' or '.join(_choices(meta))} or an integer in "
                              f"{_describe_range(meta)}, got {value!r}")
        return value
    return _scalar(value, hint, meta, path)


def _section(cls, raw, path: str):
    """An instance of section `cls` from a parsed mapping (defaults for what it leaves out)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{path + '.' if path else ''}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    hints, values = _hints(cls), {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else key
        hint = hints[key]
        values[key] = _section(hint, value, where) if _is_section(hint) else _value(value, hint, known[key].metadata,
                                                                                    where)
    return cls(**values)


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
    cfg = _section(RunConfig, _expand(raw), "")
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

def _stage_of(section_cls, f: dataclasses.Field) -> str | None:
    stage = f.metadata.get("stage", _SECTION_STAGE)
    return section_cls.STAGE if stage is _SECTION_STAGE else stage


def stage_settings(stage: str) -> list[str]:
    """The dotted names of the settings whose change redoes `stage` (its own and every earlier stage's)."""
    upto = set(STAGES[:STAGES.index(stage) + 1])
    names = []
    for top in dataclasses.fields(RunConfig):
        hint = _hints(RunConfig)[top.name]
        if _is_section(hint):
            names += [f"{top.name}.{f.name}" for f in dataclasses.fields(hint) if _stage_of(hint, f) in upto]
        elif _stage_of(RunConfig, top) in upto:
            names.append(top.name)
    return names


def stage_fingerprint(cfg: RunConfig, stage: str, method: str | None = None, method_settings: dict | None = None) -> str:
    """Hash of the settings a stage's outputs depend on (plus the method, for per-method stages, and
    the settings only that method reads, when it has any: other methods' fingerprints stay as they were).

    Top-level settings enter by name, sections as one mapping of their result-changing settings
    (by setting where the section says so); a section with adaptation off (0 steps) does not
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
    hint = _hints(section_cls)[name]
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
            return _value(value, hint, f.metadata, "")
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
            return _check_number(_parse_number(text, kind), meta, "")
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
    hint = _hints(section_cls)[name]
    kwargs = {"default": default, "help": f.metadata["help"]}
    if hint is bool:
        raise TypeError(f"{section_cls.__name__}.{name} is a switch: add it with action='store_true'")
    choices = _choices(f.metadata)
    if choices is not None and hint is str:
        kwargs["choices"] = list(choices)
    else:
        kwargs["type"] = setting_type(section_cls, name)
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)
