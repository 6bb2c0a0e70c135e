"""The `klas` command: one subcommand per pipeline stage.

    klas extract --anchors SPEC,SPEC,... --data PATH --out DIR
    klas probes --cache DIR
    klas score --cache DIR
    klas select --scores DIR [--method klas|snnet-nearest|cka|mse|ce|dm|kl-ls|random]
    klas export --selection FILE [--format snnet|csv]
    klas import-snnet FILE --scores DIR
    klas anchors [SPEC ...] [--json]
    klas eval-anchor SPEC --data PATH [--split test] [--json]
    klas run CONFIG.yaml [--method M | --compare klas,snnet-nearest] [--set KEY=VALUE]
    klas recovery CONFIG.yaml --pair SOURCE,TARGET [--set KEY=VALUE]
    klas demo [--out DIR] [--data PATH --anchors SPEC,SPEC,...]

Errors in the user's input print one line saying what is wrong and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from klas import distributed
from klas.pipeline.config import (DataSection, EvaluateSection, ExtractSection, ProbesSection, RunConfig, ScoreSection,
                         SelectSection, add_setting_option, number_type)
from klas.selection.methods import get_method, method_names
from klas.selection.options import SelectOptions
from klas.devices import check_device, triton_usable_here
from klas.errors import ConfigError, KlasError, UsageError
from klas.files import describe_path_error, describe_write_error

__all__ = ["main"]

# the `select` settings `klas select` takes as options of the same names: KLAS's own, then klas-budget's
_KLAS_SETTINGS = ("tau", "tau_mode", "buckets", "chain_rule", "flops_range")
_BUDGET_SETTINGS = ("budget_min_route_steps", "budget_max_error_ratio")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the option (no usage block above it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the help names it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings
                or action.required):
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("klas")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated list of distinct names (None stays None)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UsageError(f"{option} {text!r}: an empty name in the list")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{option} lists {', '.join(twice)} more than once; list each anchor once")
    return names


def _add_data_options(p: argparse.ArgumentParser, batch_section) -> None:
    """The options of the commands that read images; --batch-size defaults as `batch_section`'s."""
    p.add_argument("--data", required=True, help="data root: folder with train/test sets (zip or class folders), or one image set")
    add_setting_option(p, batch_section, "batch_size")
    add_setting_option(p, RunConfig, "device")
    add_setting_option(p, DataSection, "val_fraction")
    add_setting_option(p, RunConfig, "seed", help="seed of the D_t / D_v split and of --limit's draw")
    add_setting_option(p, DataSection, "train_limit", "--limit",
                       help="use N images of each split, drawn at random with --seed (quick runs)")
    add_setting_option(p, ExtractSection, "num_workers", "--workers")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_extract(args) -> int:
    from klas.extraction.extract import extract

    from klas.extraction.data import SPLITS

    specs = (_names(args.anchors, "--anchors") or []) + list(args.anchor or [])
    if not specs:
        raise UsageError("give the anchors to extract: --anchors SPEC,SPEC (or --anchor SPEC, repeated)")
    _names(",".join(specs), "--anchors")
    splits = _names(args.splits, "--splits")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:  # checked before any work starts
        raise UsageError(f"--splits {args.splits!r}: {', '.join(map(repr, unknown))} is not a split; the splits are "
                         f"{', '.join(SPLITS)} (train = D_t, val = D_v)")

    done = extract(
        specs, args.data, args.out, splits=splits, batch_size=args.batch_size,
        dtype=args.dtype, device=args.device, shard_rows=args.shard_rows, val_fraction=args.val_fraction,
        seed=args.seed, limit=args.limit, num_workers=args.workers, progress=not args.quiet,
    )
    for (name, split), path in done.items():
        print(f"{name:>28s} {split:>5s}  {path}")
    return 0


def _cmd_anchors(args) -> int:
    from klas.anchors import KINDS, TIMM_FAMILIES
    from klas.anchors.registry import COMMON_OPTIONS

    if args.specs:
        from klas.anchors import load_anchor
        from klas.pipeline.inspect_anchors import describe_anchors, describe_lines

        doc = describe_anchors([load_anchor(s) for s in args.specs])
        print(json.dumps(doc) if args.json else "\n".join(describe_lines(doc)))
        return 0

    kinds = [{"kind": k.kind, "usage": k.usage, "help": k.help,
              "options": {n: t.__name__ for n, t in {**k.options, **COMMON_OPTIONS}.items()},
              "other_options": "passed through" if k.open_options else "refused",
              "example": k.test_specs[0] if k.test_specs else None} for k in KINDS.values()]
    families = [{"family": f.name, "timm_class": f.model_class, "modules": list(f.modules),
                 "img_size": "input size only" if f.input_size_only else "passed to timm"}
                for f in TIMM_FAMILIES.values()]
    if args.json:
        print(json.dumps({"kinds": kinds, "timm_families": families}))
        return 0
    for k in kinds:
        print(f"{k['usage']}\n    {k['help']}")
        print("    options: " + ", ".join(f"{n} ({t})" for n, t in k["options"].items())
              + f"; other options {k['other_options']}")
        if k["example"]:
            print(f"    e.g. {k['example']}")
    print("\ntimm families (timm:MODEL_NAME of these classes or their subclasses):")
    for f in families:
        print(f"    {f['family']:<8} {f['timm_class']}  (img_size: {f['img_size']})")
    return 0


def _cmd_eval_anchor(args) -> int:
    from klas.evaluation.anchor_eval import evaluate_anchor

    anchor = args.spec
    if args.adapted:
        from klas.stitching.adapt import apply_adapted
        from klas.anchors import load_anchor

        anchor = apply_adapted(load_anchor(args.spec), args.adapted)
    result = evaluate_anchor(
        anchor, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
        limit=args.limit, num_workers=args.workers, val_fraction=args.val_fraction, seed=args.seed,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.anchor}: top-1 {result.top1:.2f}% ({result.correct}/{result.total}) on {result.split}, "
              f"{result.gflops:.3f} GFLOPs/image")
    return 0


def _cached_names(cache, items: list[str] | None, split: str, option: str = "--anchors") -> list[str] | None:
    """Anchor names from `items`, each a cached anchor's name or the spec it was extracted from
    (matched against the `split` caches' manifests, never loaded); None stays None."""
    if items is None:
        return None
    from pathlib import Path

    from klas.cache import read_manifest
    from klas.extraction.extract import cached_anchors

    names = cached_anchors(cache, split)
    by_spec = {}
    for name in names:
        try:
            by_spec[read_manifest(Path(cache) / name / split).anchor] = name
        except KlasError:
            continue  # a damaged manifest: the stage that reads it says so
    out = []
    for item in items:
        if item in names or ":" not in item:
            out.append(item)
        elif item in by_spec:
            out.append(by_spec[item])
        else:
            raise UsageError(f"{option}: no {split!r} cache under {cache} was extracted from {item!r}; cached: "
                             + (", ".join(f"{n} ({s})" for s, n in sorted(by_spec.items(), key=lambda t: t[1]))
                                or "none"))
    return _names(",".join(out), option)


def _anchor_names(args, split: str) -> list[str]:
    from pathlib import Path

    from klas.errors import CacheError
    from klas.extraction.extract import cached_anchors

    if not Path(args.cache).is_dir():
        raise UsageError(f"--cache {args.cache}: no such folder; give the --out folder of `klas extract`")

    names = _cached_names(args.cache, _names(args.anchors, "--anchors"), split) or cached_anchors(args.cache, split)
    if not names:
        raise CacheError(f"no complete {split!r} caches under {args.cache}; run `klas extract` first")
    return names


def _cmd_probes(args) -> int:
    from pathlib import Path

    from klas.scoring.probes import probe_table, train_probes

    names = _anchor_names(args, "train")
    root = Path(args.cache)
    out = Path(args.out) if args.out else root / "probes"
    sets = train_probes(
        [root / n / "train" for n in names], [root / n / "val" for n in names], epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, labels=args.labels, seed=args.seed, device=args.device,
        standardise=not args.no_standardise, curve=out / "training.csv",
        progress=not args.quiet,
    )
    if distributed.is_main():
        for ps in sets:
            ps.save(out)
    print(probe_table(sets))
    print(f"probes written to {out}")
    return 0


def _cmd_score(args) -> int:
    from pathlib import Path

    from klas.scoring.scores import score

    root = Path(args.cache)
    probes = Path(args.probes) if args.probes else root / "probes"
    out = Path(args.out) if args.out else root / "scores"
    names = _cached_names(root, _names(args.anchors, "--anchors"), args.split)
    s = score(root, probes, out, anchors=names, split=args.split, temperature=args.temperature, floor=args.floor,
              backend=args.backend, device=args.device, plots=not args.no_plots)
    if not args.quiet:
        _print_scores(s)
    print(f"scores written to {out}")
    return 0


def _print_scores(s) -> None:
    order = [a.name for a in s.anchors]
    print("Θ between the anchors' heads (row: source, column: target):")
    width = max(10, max(len(n) for n in order) + 2)
    print(" " * width + "".join(f"{n:>{width}}" for n in order))
    for n, row in zip(order, s.last_block().tolist()):
        print(f"{n:<{width}}" + "".join(f"{v:>{width}.4f}" for v in row))
    print("\nΣ at each anchor's last block, with its head (Γ's denominator) and with its last block's probe:")
    for n, d in s.sigma_last_block.items():
        print(f"  {n}: {d['head']:.4f} head, {d['last_probe']:.4f} last-block probe "
              f"(probe vs head {d['last_probe_vs_head']:.4f})")
    print("\nbest stitch per anchor pair (1-indexed blocks):")
    for f, g in s.pairs():
        gamma = s.gamma(f, g)
        k = int(gamma.argmin())
        i, j = divmod(k, gamma.shape[1])
        print(f"  {f} -> {g}: min Γ = {gamma.min():.4f} at (i={i + 1}, j={j + 1})")


def _cmd_select(args) -> int:
    from pathlib import Path

    from klas.files import write_json_atomic
    from klas.plots import selection_scatter
    from klas.scoring.scores import load_scores
    from klas.selection.methods import run_method
    from klas.selection.select import select_snnet_nearest

    scores_dir = Path(args.scores)
    out = Path(args.out) if args.out else scores_dir.parent / "selection"
    scores = load_scores(scores_dir)
    options = SelectOptions(**{name: getattr(args, name) for name in _KLAS_SETTINGS + _BUDGET_SETTINGS},
                            snnet_stage_skips=not args.snnet_all_stages, seed=args.seed, total_steps=args.steps,
                            cache=Path(args.cache) if args.cache else None,
                            probes=Path(args.probes) if args.probes else None,
                            predictions=Path(args.predictions) if args.predictions else None)
    if args.predictions and not Path(args.predictions).is_dir():
        raise UsageError(f"--predictions {args.predictions}: no such folder (give the predictions/ folder of a "
                         "`klas run` or `klas recovery` output)")
    sel = run_method(args.method, scores, options)
    baseline = select_snnet_nearest(scores, stage_skips=not args.snnet_all_stages) if args.method == "klas" else None
    out.mkdir(parents=True, exist_ok=True)
    stem = "selection" if args.method == "klas" else f"selection-{args.method}"
    write_json_atomic(out / f"{stem}.json", sel.to_json())
    png = selection_scatter(sel, out / f"{stem}.png", baseline=baseline)
    if not args.quiet:
        _print_selection(sel)
        from klas.selection.budget import describe

        for line in describe(sel.notes):
            print(line)
    print(f"\n{len(sel.selected)} configurations + {len(sel.anchors)} anchors; written to {out / (stem + '.json')}, "
          f"plot {png}")
    return 0


def _print_selection(sel) -> None:
    print(f"anchor chain ({sel.chain_rule}): {' -> '.join(sel.chain)}")
    for pair in sel.pairs:
        print(f"\n{pair.source} -> {pair.target}: {len(pair.selected)} of {len(pair.configs)} configurations, "
              f"{len(pair.edges) - 1} buckets" + (f", coverage added j = {pair.uncovered_added}" if pair.uncovered_added else ""))
        print(f"  {'i':>3} {'j':>3} {'MFLOPs':>9} {'Ω':>8} {'Σ':>8} {'Γ':>8} {'bucket':>6}")
        for c in pair.selected:
            print(f"  {c.i:>3} {c.j:>3} {c.flops / 1e6:>9.2f} {c.omega:>8.4f} {c.sigma:>8.4f} {c.gamma:>8.4f} {c.bucket:>6}")


def _cmd_export(args) -> int:
    from pathlib import Path

    from klas.files import write_json_atomic
    from klas.selection.export import to_snnet, write_csv
    from klas.selection.select import read_selection
    from klas.selection.snnet_bridge import to_snnet_configs

    path = Path(args.selection)
    selection = read_selection(path)
    suffix = {"snnet": ".snnet.json", "klas-pairs": ".pairs.json", "csv": ".csv"}[args.format]
    out = Path(args.out) if args.out else path.with_suffix(suffix)
    if args.format == "snnet":
        write_json_atomic(out, to_snnet_configs(selection))
    elif args.format == "klas-pairs":
        write_json_atomic(out, to_snnet(selection))
    else:
        write_csv(selection, out)
    print(f"{args.format} export written to {out}")
    return 0


def _cmd_import_snnet(args) -> int:
    """SN-Net's configuration list (`klas export --format snnet`), klas's pair form (`--format
    klas-pairs`), or SN-Net's own config file (DeiT's or ResNet/Swin's JSON, Swin's YAML: its
    anchors, with SN-Net's rules) -> a selection scored with our Θ."""
    from pathlib import Path

    import yaml

    from klas.files import write_json_atomic
    from klas.reading import read_json
    from klas.scoring.scores import load_scores
    from klas.selection.export import SNNET_FORMAT, from_snnet
    from klas.selection.snnet_bridge import from_snnet_configs, snnet_config_anchors, snnet_rules_selection

    fix = "give `klas export --format snnet` output or an SN-Net config file (JSON, or Swin's YAML)"
    if str(args.config).endswith((".yaml", ".yml")):
        try:
            doc = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UsageError(f"{args.config}: cannot read it as YAML ({type(e).__name__}); {fix}") from None
    else:
        doc = read_json(args.config, what="SN-Net configuration file", error=UsageError, fix=fix)
    scores = load_scores(args.scores)
    if isinstance(doc, dict) and doc.get("format") == SNNET_FORMAT:
        sel = from_snnet(doc, scores, where=args.config)
    elif isinstance(doc, dict) and isinstance(doc.get("stitch_configs"), list):
        sel = from_snnet_configs(doc, scores, where=args.config)
    else:
        sel = snnet_rules_selection(scores, snnet_config_anchors(doc, where=args.config), where=args.config)
    out = Path(args.out) if args.out else Path(args.scores).parent / "selection"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "selection-imported.json", sel.to_json())
    _print_selection(sel)
    print(f"\nscored with our Θ; written to {out / 'selection-imported.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="klas", description="Choose where to stitch pretrained networks (KLAS). The method and "
                                               "every symbol (Θ, Ω, Σ, Γ, τ, D_t / D_v, the coverage rule): "
                                               "docs/METHOD.md in the repository.")
    parser.add_argument("--version", action="version", version=f"klas {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    plain_add_parser = sub.add_parser

    def add_parser(name: str, **kwargs):
        """A subcommand whose own --help opens with its one-line description and lists defaults."""
        kwargs.setdefault("description", kwargs.get("help"))
        return plain_add_parser(name, formatter_class=_HelpWithDefaults, **kwargs)

    sub.add_parser = add_parser

    p = sub.add_parser("extract", help="cache every block's pooled output for each anchor and split")
    p.add_argument("--anchors", help="comma-separated anchor specs; a module:PKG.MOD:FACTORY spec imports PKG.MOD "
                                     "and calls FACTORY, so give only specs you trust")
    p.add_argument("--anchor", action="append", help="one anchor spec, repeatable (the same as --anchors)")
    p.add_argument("--out", required=True, help="cache root; caches go to OUT/<anchor>/<split>")
    p.add_argument("--splits", default="train,val", help="comma-separated: train (D_t), val (D_v), test")
    add_setting_option(p, ExtractSection, "dtype")
    add_setting_option(p, ExtractSection, "shard_rows")
    _add_data_options(p, ExtractSection)
    p.set_defaults(run=_cmd_extract)

    p = sub.add_parser("probes", help="train a linear probe on every block of every anchor (from the caches)")
    p.add_argument("--cache", required=True, help="extraction output folder (OUT of klas extract)")
    p.add_argument("--anchors", help="comma-separated anchor names or the specs they were extracted from "
                                     "(default: every cached anchor)")
    p.add_argument("--out", help="where to write the probes (default: CACHE/probes)")
    for name in ("epochs", "batch_size", "lr", "weight_decay"):
        add_setting_option(p, ProbesSection, name)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"], help="the probes' optimiser")
    p.add_argument("--label-smoothing", type=number_type(float, low=0.0, high=1.0, open_high=True), default=0.0,
                   help="label smoothing of the probes' cross-entropy")
    p.add_argument("--no-standardise", action="store_true",
                   help="train probes on the raw pooled features (default: standardised per feature on D_t, "
                        "folded into the saved weights)")
    add_setting_option(p, ProbesSection, "labels")
    add_setting_option(p, RunConfig, "seed", help="seed of the probes' initialisation and batch order")
    add_setting_option(p, RunConfig, "device")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_probes)

    p = sub.add_parser("score", help="Θ for every block pair over D_v, Σ and Γ for every anchor pair")
    p.add_argument("--cache", required=True, help="extraction output folder")
    p.add_argument("--probes", help="probe folder (default: CACHE/probes)")
    p.add_argument("--out", help="where to write the scores (default: CACHE/scores)")
    p.add_argument("--anchors", help="comma-separated anchor names or the specs they were extracted from "
                                     "(default: every anchor with probes)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="the split Θ is measured on")
    for name in ("temperature", "floor", "backend"):
        add_setting_option(p, ScoreSection, name)
    add_setting_option(p, RunConfig, "device")
    p.add_argument("--no-plots", action="store_true", help="skip the heatmap PNGs")
    p.add_argument("--quiet", action="store_true", help="print only where the scores went (not Θ between the "
                                                        "heads, Σ at the last blocks, the best stitch per pair)")
    p.set_defaults(run=_cmd_score)

    p = sub.add_parser("select", help="the KLAS candidate set from the scores (anchor chain, buckets, τ, coverage)")
    p.add_argument("--scores", required=True, help="folder written by klas score")
    p.add_argument("--out", help="where to write selection.json and selection.png (default: beside the scores)")
    for name in _KLAS_SETTINGS:
        add_setting_option(p, SelectSection, name)
    p.add_argument("--snnet-all-stages", action="store_true",
                   help="SN-Net baseline: stitch every stage (default: skip the stages SN-Net's code skips)")
    p.add_argument("--method", default="klas", choices=method_names(),
                   help="; ".join(f"{m}: {get_method(m).help}" for m in method_names()))
    p.add_argument("--cache", help="extraction output (for the methods that read the caches)")
    p.add_argument("--probes", help="probe folder for --method ce / kl-ls (default: CACHE/probes)")
    p.add_argument("--predictions", help="--method klas-budget: the predictions/ folder of a `klas run` or `klas "
                                         "recovery` output (each hop's predicted stitch accuracies)")
    add_setting_option(p, SelectOptions, "total_steps", "--steps", help="--method klas-budget: the finetuning "
                       "budget the set is sized for (a run's finetune.steps)")
    for name in _BUDGET_SETTINGS:
        add_setting_option(p, SelectSection, name)
    add_setting_option(p, RunConfig, "seed", help="seed of --method random")
    p.add_argument("--quiet", action="store_true", help="print only the set's size and where it went (not the "
                                                        "chain and every selected configuration)")
    p.set_defaults(run=_cmd_select)

    p = sub.add_parser("export", help="write a selection as SN-Net's configuration list, klas's pair form or CSV")
    p.add_argument("--selection", required=True, help="selection.json written by klas select")
    p.add_argument("--format", default="snnet", choices=["snnet", "klas-pairs", "csv"],
                   help="snnet: the list SN-Net's SNNet.__init__ builds (comb_id, stage_id, stitch_cfgs, "
                        "stitch_layers; see klas/selection/snnet_bridge.py for the patch point); klas-pairs: "
                        "(a, b) per anchor pair; csv: one row per configuration (default: snnet)")
    p.add_argument("--out", help="output file (default: beside the selection)")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("import-snnet", help="score SN-Net's configurations with our Θ")
    p.add_argument("config", help="`klas export --format snnet` (or klas-pairs) output, or SN-Net's own config "
                                  "file (DeiT's or ResNet/Swin's JSON, Swin's YAML): its anchors, SN-Net's rules")
    p.add_argument("--scores", required=True, help="folder written by klas score")
    p.add_argument("--out", help="where to write selection-imported.json (default: beside the scores)")
    p.set_defaults(run=_cmd_import_snnet)

    p = sub.add_parser("anchors", help="list the kinds of anchor spec, their options, and the timm families; "
                                       "with specs: their blocks, grids, FLOPs and which pairs can be stitched")
    p.add_argument("specs", nargs="*", help="anchor specs to describe (e.g. cifar-zoo:resnet cifar-zoo:googlenet)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_anchors)

    p = sub.add_parser("eval-anchor", help="top-1 accuracy of one anchor on a dataset split")
    p.add_argument("spec", help="anchor spec, e.g. cifar-resnet:20 or timm:deit_tiny_patch16_224 (module:PKG.MOD:FACTORY "
                                "imports PKG.MOD and calls FACTORY)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split evaluated")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--adapted", metavar="DIR", help="evaluate the anchor with the adapted weights a run wrote there "
                                                   "(OUT/adapted/<anchor name>), checked against the spec's weights")
    _add_data_options(p, EvaluateSection)
    p.set_defaults(run=_cmd_eval_anchor)

    p = sub.add_parser("run", help="the whole pipeline from a YAML config, resuming completed stages")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--method", choices=method_names(), help="one selection method (default: the config's)")
    p.add_argument("--compare", help="comma-separated methods run with equal budgets into one report, "
                                     "e.g. klas,snnet-nearest")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. finetune.steps=200")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (defaults filled in, --set applied, validated) as YAML and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_run)

    p = sub.add_parser("recovery", help="the recovery test: every configuration of one anchor pair trained alone, "
                                        "and how well each method's picks recover the good ones")
    p.add_argument("config", help="YAML config (see configs/); its `recovery` section sets the budget")
    p.add_argument("--pair", required=True, help="SOURCE,TARGET: two anchors of the config (names or specs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. recovery.steps=100")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_recovery)

    p = sub.add_parser("demo", help="end-to-end demo: a small digits family (from scikit-learn), KLAS vs SN-Net")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--data", help="run on this data root instead (e.g. ../shared/data/cifar10); needs --anchors")
    p.add_argument("--anchors", help="comma-separated anchor specs for --data (e.g. cifar-resnet:20,cifar-resnet:56)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_demo)
    return parser


def _overrides(items: list[str] | None) -> dict:
    """--set KEY=VALUE items as {dotted key: YAML value}."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. finetune.steps=200), got {item!r}")
        import yaml

        from klas.reading import MAX_JSON_DEPTH, nesting_depth

        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: the value {value!r} does not parse ({' '.join(str(e).split())})") from None
        except RecursionError:
            raise ConfigError(f"--set {key[:60]}: the value is nested too deeply") from None
        if nesting_depth(overrides[key], MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ConfigError(f"--set {key[:60]}: the value is nested more than {MAX_JSON_DEPTH} levels")
    return overrides


def _cmd_recovery(args) -> int:
    from klas.pipeline.config import load_config
    from klas.pipeline.run import run_recovery

    cfg = load_config(args.config, _overrides(args.set))
    run_recovery(cfg, [p.strip() for p in args.pair.split(",")], progress=not args.quiet)
    return 0


def _cmd_run(args) -> int:
    from klas.pipeline.config import load_config
    from klas.pipeline.run import run

    overrides = _overrides(args.set)
    if args.method:
        overrides["select.method"] = args.method
    if args.compare:
        overrides["select.compare"] = args.compare
    cfg = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_json(), sort_keys=False, allow_unicode=True), end="")
        return 0
    methods = [args.method] if args.method and not args.compare else None
    run(cfg, methods=methods, progress=not args.quiet)
    return 0


def _cmd_demo(args) -> int:
    from klas.pipeline.demo import demo

    anchors = _names(args.anchors, "--anchors")
    report = demo(args.out, data=args.data, anchors=anchors, progress=not args.quiet)
    print(f"\ndemo finished: open {report / 'accuracy_flops.png'} (numbers in {report / 'report.json'})")
    return 0


# commands that share their work across the ranks of a torchrun job; the others run in one process
RANK_AWARE = ("extract", "probes", "score", "run", "recovery")


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. User errors (the project's own error types, unwritable or unreadable
    paths) print one line and return 2; Ctrl-C returns 130; anything else is a bug and keeps its
    traceback."""
    if argv is None:  # the command line: `srun -n N klas run …` takes its ranks from SLURM's variables
        distributed.adopt_slurm_ranks()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an option argparse refused (one line already printed)
        return e.code if isinstance(e.code, int) else 2
    where = f"klas {args.command}"
    try:
        if hasattr(args, "device"):
            args.device = check_device(args.device)
        if getattr(args, "backend", None) == "triton" and not triton_usable_here():
            raise UsageError("--backend triton needs a CUDA GPU and Triton; none is usable here (use --backend auto)")
        if not distributed.launched_by_torchrun():
            return args.run(args)
        if args.command not in RANK_AWARE:
            raise KlasError(f"`klas {args.command}` runs in one process: start it without torchrun "
                            f"(torchrun serves {', '.join(RANK_AWARE)})")
        if args.command not in ("run", "recovery"):  # these join the group themselves, with the config's device and timeout
            distributed.init_from_env(args.device)
            args.device = distributed.rank_device(args.device)
        with contextlib.ExitStack() as quiet:
            if not distributed.is_main():  # rank 0 alone prints results (run() quiets its own log)
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            code = args.run(args)
        distributed.shutdown()  # leave the process group (on errors torchrun stops every rank)
        return code
    except KlasError as e:
        _say(f"{where}{_which_rank()}: error: {_one_line(str(e))}")
        return 2
    except KeyboardInterrupt:
        _say(f"{where}: interrupted; run the same command again to continue")
        return 130
    except OSError as e:
        message = describe_write_error(e) or describe_path_error(e)
        if message is None:
            raise
        _say(f"{where}{_which_rank()}: error: {_one_line(message)}")
        return 2
    except Exception:
        import traceback

        traceback.print_exc()
        _say(f"{where}: internal error (a bug in klas, not in your input): please report it with the traceback above")
        return 1


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    """`text` on one line. An error raised in a DataLoader worker arrives wrapped in the worker's
    traceback: its own message is the last line, after the error type."""
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        kind, sep, message = last.partition(": ")
        text = message if sep and kind.replace(".", "").replace("_", "").isalnum() else last
    return " ".join(text.split())


def _which_rank() -> str:
    """" (rank r of w)" under torchrun, so that a job's log says which rank failed."""
    ctx = distributed.context()
    return f" ({ctx.describe()})" if ctx.distributed else ""


if __name__ == "__main__":
    sys.exit(main())
