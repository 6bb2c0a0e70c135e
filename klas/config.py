"""Run configuration (`klas run CONFIG.yaml`): defaults, validation, per-stage fingerprints.

A config is YAML with the sections below; anything left out takes the default shown. Unknown keys
and values of the wrong type are errors that name the key path (``finetune.stepz: unknown key``).
Strings may use ``${KLAS_SHARED}`` (the shared folder, klas.settings) and other environment
variables. Relative paths are relative to the working directory.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from typing import Any

from klas.errors import ConfigError

__all__ = ["DEFAULTS", "PROTOCOLS", "load_config", "validate_config", "stage_fingerprint", "ConfigError"]


# section -> key -> default; a default of None accepts None or the type given in OPTIONAL_TYPES
DEFAULTS: dict[str, Any] = {
    "name": "klas-run",
    "out": "runs/klas-run",
    "seed": 0,
    "seeds": [],  # several seeds: the whole comparison once per seed, figures as mean and 95% interval
    "device": "cpu",
    "anchors": [],
    "data": {"root": "", "val_fraction": 0.1, "train_limit": None, "val_limit": None, "test_limit": None},
    # anchor adaptation before extraction (0 steps: off): each anchor finetuned alone on D_t
    "adapt": {"steps": 0, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.05, "warmup_fraction": 0.05},
    "extract": {"dtype": "float16", "batch_size": 256, "shard_rows": 4096, "num_workers": 0},
    "probes": {"epochs": 4, "batch_size": 256, "lr": 1e-2, "weight_decay": 0.0, "labels": "true", "standardise": True},
    "score": {"temperature": 1.0, "floor": 1e-6, "backend": "auto"},
    "select": {"method": "klas", "compare": [], "tau": 0.05, "tau_mode": "relative", "buckets": "auto",
               "chain_rule": "minimax", "flops_range": "exclude", "snnet_stage_skips": True},
    "finetune": {"steps": 1000, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.05, "warmup_fraction": 0.05,
                 "protocols": ["snnet", "stitches-only"], "freeze_bn": True, "anchors": "chain", "checkpoint_every": 100, "calibration_images": 128, "num_workers": 0},
    "evaluate": {"batch_size": 500, "split": "test"},
    # klas recovery: every configuration of one pair trained alone (the stitching layer) with this budget
    "recovery": {"steps": 200, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "calibration_images": 128,
                 "delta": 0.5, "random_seeds": 20, "test_limit": None,
                 "methods": ["klas", "kl-ls", "snnet-nearest", "cka", "mse", "ce", "dm", "random"]},
    "distributed": {"timeout_s": 1800.0},  # under torchrun: how long a rank waits for the others
}
OPTIONAL_TYPES = {"train_limit": int, "val_limit": int, "test_limit": int}  # recovery.test_limit too
CHOICES = {
    ("extract", "dtype"): ("float16", "bfloat16", "float32"),
    ("probes", "labels"): ("true", "pseudo"),
    ("score", "backend"): ("auto", "torch", "native", "triton"),
    ("select", "tau_mode"): ("relative", "absolute"),
    ("select", "chain_rule"): ("minimax", "nearest"),
    ("select", "flops_range"): ("exclude", "end-buckets"),
    ("finetune", "anchors"): ("chain", "all"),
    ("evaluate", "split"): ("test", "val"),
}


# numeric settings: (lowest, highest, lowest allowed itself?); every number must also be finite
RANGES: dict[tuple[str, str], tuple[float, float, bool]] = {
    ("", "seed"): (0, 2**63 - 1, True),
    ("data", "val_fraction"): (0.0, 1.0, False),
    ("data", "train_limit"): (1, 10**9, True), ("data", "val_limit"): (1, 10**9, True),
    ("data", "test_limit"): (1, 10**9, True),
    ("extract", "batch_size"): (1, 65536, True), ("extract", "shard_rows"): (1, 10**7, True),
    ("extract", "num_workers"): (0, 256, True),
    ("probes", "epochs"): (1, 10**4, True), ("probes", "batch_size"): (1, 10**6, True),
    ("probes", "lr"): (0.0, 100.0, False), ("probes", "weight_decay"): (0.0, 100.0, True),
    ("score", "temperature"): (0.0, 1e6, False), ("score", "floor"): (0.0, 1e6, False),
    ("select", "tau"): (0.0, 1e6, False),
    ("finetune", "steps"): (0, 10**9, True), ("finetune", "batch_size"): (1, 65536, True),
    ("finetune", "lr"): (0.0, 100.0, False), ("finetune", "weight_decay"): (0.0, 100.0, True),
    ("finetune", "warmup_fraction"): (0.0, 1.0, True), ("finetune", "checkpoint_every"): (1, 10**9, True),
    ("finetune", "calibration_images"): (1, 10**6, True), ("finetune", "num_workers"): (0, 256, True),
    ("evaluate", "batch_size"): (1, 65536, True),
    ("adapt", "steps"): (0, 10**8, True), ("adapt", "batch_size"): (1, 65536, True),
    ("adapt", "lr"): (0.0, 100.0, False), ("adapt", "weight_decay"): (0.0, 100.0, True),
    ("adapt", "warmup_fraction"): (0.0, 1.0, True),
    ("recovery", "steps"): (0, 10**7, True), ("recovery", "batch_size"): (1, 65536, True),
    ("recovery", "lr"): (0.0, 100.0, False), ("recovery", "weight_decay"): (0.0, 100.0, True),
    ("recovery", "calibration_images"): (1, 10**6, True), ("recovery", "delta"): (0.0, 100.0, True),
    ("recovery", "random_seeds"): (1, 10**4, True), ("recovery", "test_limit"): (1, 10**9, True),
    ("distributed", "timeout_s"): (0.0, 10**7, False),
}
MAX_BUCKETS = 10_000
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 100_000  # a config has a few dozen; YAML aliases can make a small file unbounded


def _check_ranges(cfg: dict) -> None:
    import math

    for (section, key), (low, high, closed) in RANGES.items():
        path = f"{section}.{key}" if section else key
        value = cfg[section][key] if section else cfg[key]
        if value is None:
            continue
        if not math.isfinite(value) or value > high or value < low or (value == low and not closed):
            lo = f"[{low}" if closed else f"({low}"
            raise ConfigError(f"{path}: must be a finite number in {lo}, {high}], got {value!r}")
    buckets = cfg["select"]["buckets"]
    if buckets != "auto" and not (isinstance(buckets, int) and 1 <= buckets <= MAX_BUCKETS):
        raise ConfigError(f"select.buckets: must be auto or an integer in [1, {MAX_BUCKETS}], got {buckets!r}")
    if len(set(cfg["anchors"])) != len(cfg["anchors"]):
        raise ConfigError(f"anchors: lists an anchor twice ({cfg['anchors']}); list each once")


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


def _check(value: Any, default: Any, path: str) -> Any:
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - set(default))
        if unknown:
            raise ConfigError(f"{path + '.' if path else ''}{unknown[0]}: unknown key (known: {', '.join(sorted(default))})")
        merged = copy.deepcopy(default)
        for key, v in value.items():
            merged[key] = _check(v, default[key], f"{path}.{key}" if path else key)
        return merged
    if default is None:
        want = OPTIONAL_TYPES.get(path.rsplit(".", 1)[-1])
        if value is not None and not (isinstance(value, want) and not isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {want.__name__} or null, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if isinstance(default, list) and path == "seeds":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
                (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.isdigit()) for v in value):
            raise ConfigError(f"{path}: expected a list of integers, got {value!r}")
        return [int(v) for v in value]
    if isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return value
    if isinstance(default, str):
        if path == "select.buckets" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def validate_config(raw: Any) -> dict:
    """The full config (defaults filled in) from a parsed document; ConfigError naming the bad key."""
    if raw is None:
        raw = {}
    if _count_nodes(raw, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(f"the config has more than {MAX_CONFIG_NODES} values (YAML aliases expanding?); write "
                          "the settings out plainly")
    cfg = _check(_expand(raw), DEFAULTS, "")
    _check_ranges(cfg)
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{section}.{key}: must be one of {list(allowed)}, got {cfg[section][key]!r}")
    for protocol in cfg["finetune"]["protocols"]:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"finetune.protocols: unknown protocol {protocol!r} (have {list(PROTOCOLS)})")
    if not cfg["finetune"]["protocols"] or len(set(cfg["finetune"]["protocols"])) != len(cfg["finetune"]["protocols"]):
        raise ConfigError("finetune.protocols: list one or more distinct protocols (snnet, stitches-only)")
    seeds = cfg["seeds"]
    if len(set(seeds)) != len(seeds) or any(not 0 <= v < 2**63 for v in seeds):
        raise ConfigError(f"seeds: distinct integers in 0..2^63-1, got {cfg['seeds']}")
    if len(cfg["anchors"]) < 2:
        raise ConfigError("anchors: list at least two anchor specs (e.g. cifar-resnet:20, cifar-resnet:56)")
    if cfg["distributed"]["timeout_s"] <= 0:
        raise ConfigError(f"distributed.timeout_s: must be positive, got {cfg['distributed']['timeout_s']}")
    if not cfg["data"]["root"]:
        raise ConfigError("data.root: the image folder or zip is required")
    from klas.select import METHODS, METRIC_METHODS

    for m in cfg["recovery"]["methods"]:
        if m not in (*METHODS, *METRIC_METHODS):
            raise ConfigError(f"recovery.methods: unknown method {m!r} (have {sorted((*METHODS, *METRIC_METHODS))})")
    for m in [cfg["select"]["method"], *cfg["select"]["compare"]]:
        if m not in (*METHODS, *METRIC_METHODS):
            raise ConfigError(f"select.method: unknown method {m!r} (have {sorted((*METHODS, *METRIC_METHODS))})")
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> dict:
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
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {p} is not a section")
        node[last] = value
    return validate_config(raw)


# which parts of the config each stage's outputs depend on (its own and everything upstream)
STAGE_KEYS = {
    "adapt": ("anchors", "data", "seed", "adapt"),
    "extract": ("anchors", "data", "adapt", "extract", "seed"),
    "probes": ("anchors", "data", "adapt", "extract", "seed", "probes"),
    "score": ("anchors", "data", "adapt", "extract", "seed", "probes", "score"),
    "select": ("anchors", "data", "adapt", "extract", "seed", "probes", "score", "select.tau", "select.tau_mode",
               "select.buckets", "select.chain_rule", "select.flops_range", "select.snnet_stage_skips"),
    "finetune": ("anchors", "data", "adapt", "extract", "seed", "probes", "score", "select.tau", "select.tau_mode",
                 "select.buckets", "select.chain_rule", "select.flops_range", "select.snnet_stage_skips", "finetune"),
    "evaluate": ("anchors", "data", "adapt", "extract", "seed", "probes", "score", "select.tau", "select.tau_mode",
                 "select.buckets", "select.chain_rule", "select.flops_range", "select.snnet_stage_skips", "finetune",
                 "evaluate"),
}
# settings that change speed or file layout, not results (protocols: each protocol's stages carry
# their own name in the fingerprint, so adding one does not redo the others)
_NOT_RESULTS = {"num_workers", "checkpoint_every", "shard_rows", "protocols"}
# finetuning protocols: SN-Net's (anchors and stitching layers train), or the stitching layers alone
# (anchors frozen and identical in every supernet, so that only the selection differs)
PROTOCOLS = {"snnet": False, "stitches-only": True}


def stage_fingerprint(cfg: dict, stage: str, method: str | None = None) -> str:
    """Hash of the config parts a stage's outputs depend on (plus the method, for per-method stages)."""
    picked = {}
    for key in STAGE_KEYS[stage]:
        if key == "adapt" and cfg["adapt"]["steps"] == 0:
            continue  # no adaptation: the stages' outputs are those of a config without the section
        node = cfg
        for part in key.split("."):
            node = node[part]
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if k not in _NOT_RESULTS}
        picked[key] = node
    if method is not None:
        picked["method"] = method
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]
