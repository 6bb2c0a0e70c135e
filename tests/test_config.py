"""The typed run config: one declaration per setting feeds validation, the CLI and the stage fingerprints."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from klas.pipeline.cli import build_parser
from klas.pipeline.config import (STAGES, ConfigError, ExtractSection, RunConfig, SelectSection, stage_fingerprint,
                         stage_settings, validate_config)

RAW = {"anchors": ["cifar-resnet:20", "cifar-resnet:56"], "data": {"root": "/data/cifar10"},
       "adapt": {"steps": 400, "lr": 2e-4}, "select": {"compare": ["klas", "snnet-nearest"], "buckets": 12},
       "finetune": {"steps": 1500, "protocols": ["stitches-only"]}}
# recorded from the hand-listed fingerprints the derived ones replace: runs made before keep being found
# up to date (from scoring on, re-recorded when FLOPs became multiply-accumulates: runs that recorded the
# older count are redone from there, not mixed with the new one)
RECORDED = {"adapt": "038e9536c92969f5", "extract": "3bd0e474ad05cf1e", "probes": "a5789e4cb3f87a90",
            "score": "c92fc45fe780988d", "select": "d558a56d94dc9c82", "finetune": "28f5bf538f28dbf5",
            "evaluate": "f9d822db3b77939d"}


def _fingerprints(cfg) -> dict:
    return {st: stage_fingerprint(cfg, st, None if STAGES.index(st) < STAGES.index("select") else "klas/snnet")
            for st in STAGES}


def test_derived_fingerprints_equal_the_recorded_ones():
    assert _fingerprints(validate_config(RAW)) == RECORDED
    no_adapt = validate_config({**RAW, "adapt": {"steps": 0}})
    assert stage_fingerprint(no_adapt, "extract") == "e2454d3154ad9d27"
    assert stage_fingerprint(no_adapt, "evaluate", "m") == "76a819823b160680"


def _every_setting(cfg: RunConfig):
    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                yield f"{top.name}.{f.name}"
        else:
            yield top.name


def _changed(cfg: RunConfig, dotted: str) -> RunConfig:
    """`cfg` with one setting moved to another valid value."""
    top, _, key = dotted.partition(".")
    raw = cfg.to_json()
    node, name = (raw[top], key) if key else (raw, top)
    value = node[name]
    choices = {"extract.dtype": "float32", "probes.labels": "pseudo", "score.backend": "torch",
               "select.method": "snnet-nearest", "select.compare": ["cka"], "select.tau_mode": "absolute",
               "select.buckets": 5, "select.chain_rule": "nearest", "select.flops_range": "end-buckets",
               "finetune.protocols": ["snnet"], "finetune.anchors": "all", "evaluate.split": "val",
               "recovery.methods": ["klas"], "adapt.precision": "bfloat16", "finetune.precision": "bfloat16",
               "recovery.precision": "bfloat16", "name": "other", "out": "elsewhere", "device": "cuda", "compile": "on",
               "memory_format": "contiguous",
               "anchors": ["cifar-resnet:20", "cifar-resnet:44"], "seeds": [3], "data.root": "/other"}
    if dotted in choices:
        node[name] = choices[dotted]
    elif isinstance(value, bool):
        node[name] = not value
    elif value is None:
        node[name] = 7
    elif isinstance(value, (int, float)):
        node[name] = value / 2 if isinstance(value, float) and 0 < value <= 1 else value + 1
    else:
        raise AssertionError(f"no other value for {dotted} ({value!r})")
    if dotted == "recovery.delta_from_noise":  # valid only with repeats to measure the noise on
        node["repeats"] = 2
    return validate_config(raw)


def test_each_setting_redoes_exactly_its_stage_and_the_later_ones():
    """Move every setting in turn: the stages from its own on change fingerprint, earlier ones do not,
    and settings of no stage (speed, layout, which methods run) change none."""
    base = validate_config(RAW)
    before = _fingerprints(base)
    for dotted in _every_setting(base):
        after = _fingerprints(_changed(base, dotted))
        changed = [st for st in STAGES if after[st] != before[st]]
        first = next((st for st in STAGES if dotted in stage_settings(st)), None)
        expected = [] if first is None else list(STAGES[STAGES.index(first):])
        assert changed == expected, dotted


def test_speed_and_layout_settings_are_in_no_fingerprint():
    names = set(stage_settings("evaluate"))
    for quiet in ("extract.num_workers", "extract.shard_rows", "finetune.num_workers", "finetune.checkpoint_every",
                  "finetune.protocols", "select.method", "select.compare", "seeds", "out", "device", "compile"):
        assert quiet not in names
    assert {"seed", "anchors", "data.root", "select.tau", "finetune.steps", "evaluate.split"} <= names
    assert not any(n.startswith(("recovery.", "distributed.")) for n in names)


def _option(command: str, flag: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


def test_the_cli_takes_defaults_choices_and_help_from_the_config():
    assert _option("extract", "--batch-size").default == ExtractSection().batch_size == 256
    assert _option("extract", "--dtype").choices == ["float16", "bfloat16", "float32"]
    assert _option("select", "--tau").default == SelectSection().tau
    assert _option("select", "--tau").help == dataclasses.fields(SelectSection)[2].metadata["help"]
    from klas.selection.methods import method_names

    assert list(_option("select", "--method").choices) == list(method_names())
    assert list(_option("run", "--method").choices) == list(method_names())


def test_every_cli_option_has_help():
    parser = build_parser()
    for name, sub in next(a for a in parser._actions if a.dest == "command").choices.items():
        for action in sub._actions:
            assert action.help, f"klas {name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("edit, message", [
    ({"select": {"buckets": "many"}}, "select.buckets: must be auto or an integer in [1, 10000]"),
    ({"select": {"buckets": True}}, "select.buckets: must be auto or an integer"),
    ({"seeds": [1, 1]}, "seeds: lists [1] more than once"),
    ({"seeds": "0,x"}, "seeds: expected a list of integers"),
    ({"finetune": {"protocols": ["snnet", "fast"]}}, "finetune.protocols: must be one of ['snnet', 'stitches-only']"),
    ({"finetune": {"protocols": []}}, "finetune.protocols: list one or more"),
    ({"recovery": {"methods": ["klas-snnet-chain"]}}, "recovery.methods: must be one of"),
    ({"data": {"val_fraction": 0.0}}, "data.val_fraction: must be a finite number in (0.0, 1.0]"),
    ({"finetune": {"freeze_bn": "yes"}}, "finetune.freeze_bn: expected true or false"),
    ({"select": []}, "select: expected a mapping"),
])
def test_bad_values_name_their_key(edit, message):
    with pytest.raises(ConfigError) as e:
        validate_config({**RAW, **edit})
    assert message in str(e.value)


def test_seeds_read_from_a_comma_list_and_numbers_from_exponent_strings():
    cfg = validate_config({**RAW, "seeds": "0,1,2", "finetune": {"lr": "1e-4"}})
    assert cfg.seeds == [0, 1, 2] and cfg.finetune.lr == 1e-4
    assert validate_config(cfg) == cfg  # a typed config checks again to itself


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_subcommand_has_a_description_and_one_style_of_default():
    """Each subcommand's --help opens with its one-line description; every option's default is said
    once, as "(default: X)", whether the formatter adds it or the help text names it."""
    for name, sub in _subcommands().items():
        text = sub.format_help()
        assert sub.description, f"klas {name} --help has no description"
        assert sub.description.split()[0] in text, name
        for action in sub._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS):
                continue
            shown = sub._get_formatter()._expand_help(action) if action.help else ""
            assert "(default " not in shown and "default %" not in shown, (name, action.option_strings, shown)
            assert shown.count("(default: ") <= 1, (name, action.option_strings, shown)
            if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and not action.required:
                assert "default" in shown, (name, action.option_strings, shown)
