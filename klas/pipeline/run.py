"""`klas run CONFIG`: extract → probes → score → select → stitch + finetune → evaluate → report.

Output layout under ``cfg.out``::

    adapted/<anchor>/               adapted weights + adapted.json, training/ (stage adapt, when on)
    cache/<anchor>/{train,val}/     activation caches          (stage extract)
    cache/probes/                   probe weights + accuracies, training.csv (stage probes)
    cache/scores/                   Θ, Σ, Γ                    (stage score)
    predictions/<source>__<target>.json   klas-budget's predicted stitch accuracies (when a method
                                    reads them; each file records its inputs and is reused for the same)
    methods/<method>/selection/     selection.json + plot      (stage select, per method)
    methods/<method>/<protocol>/supernet/    checkpoint.pt, training.csv (stage finetune, per method
                                             and finetuning protocol)
    methods/<method>/<protocol>/evaluation/  evaluation.json: top-1, FLOPs, parameters per route
                                             (stage evaluate)
    report/<protocol>/              report.json, routes.csv, accuracy_flops.png, training_curves.png
    seed-<k>/..., summary/          with `seeds`: the above once per seed, and the intervals
    recovery/<source>__<target>/    `klas recovery`

Every stage directory gets a ``.klas-stage.json`` with the fingerprint of the config parts its
outputs depend on, written only after the outputs are complete. A stage whose marker matches is
skipped; one whose marker differs refuses to overwrite (another config made those files); one
without a marker runs again, and extraction and finetuning continue where they stopped.

Under torchrun (``torchrun --nproc_per_node=N -m klas run CONFIG``) every rank runs this same
function: extraction, probes, scoring, finetuning and evaluation share the work across the ranks
(klas.distributed); selection and the report run on rank 0; only rank 0 writes markers and shared
files, and every rank waits for them before the next stage.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from klas import distributed as dist
from klas.pipeline.config import PROTOCOLS, ConfigError, RunConfig, stage_fingerprint
from klas.errors import CacheError, KlasError
from klas.files import write_json_atomic
from klas.limits import FLOPS_DEFINITION
from klas.reading import read_json
from klas.selection.methods import methods_needing_predictions
from klas.selection.select import Selection, read_selection
from klas.training_log import TRAINING_CSV

__all__ = ["run", "run_methods", "run_recovery", "prepare", "stage_done", "recovery_table", "stage_times",
           "timing_table", "MARKER", "RUN_LOCK"]

MARKER = ".klas-stage.json"


def stage_done(directory: Path, stage: str, fingerprint: str) -> bool:
    """True when `directory` holds this stage's finished outputs for `fingerprint`; False when it has
    no marker; ConfigError when the marker is damaged or belongs to another config."""
    marker = directory / MARKER
    if not os.path.lexists(marker):
        return False
    found = read_json(marker, what="stage marker", error=ConfigError, inside=directory,
                      fix=f"delete {directory} to redo the {stage} stage").get("fingerprint")
    if found == fingerprint:
        return True
    raise ConfigError(f"{directory} holds {stage} outputs of another config (fingerprint {str(found)[:40]}, this "
                      f"config {fingerprint}); give the run another `out`, or delete {directory} to redo the stage")


def _stage(directory: Path, stage: str, fingerprint: str, work: Callable[[], None], log, *,
           every_rank: bool = True) -> bool:
    """Runs `work` unless `directory` holds this stage's outputs for this fingerprint. True if it ran.

    every_rank: `work` is collective (every rank calls it); otherwise rank 0 alone runs it.
    """
    marker = directory / MARKER
    if stage_done(directory, stage, fingerprint):
        log(f"[{stage}] up to date in {directory}, skipped")
        return False
    log(f"[{stage}] running -> {directory}")
    began = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    if every_rank or dist.is_main():
        work()
    dist.barrier()  # every rank's part is done before the marker says so
    if dist.is_main():
        write_json_atomic(marker, {"stage": stage, "fingerprint": fingerprint,
                                   "seconds": time.perf_counter() - began, "ranks": dist.context().world_size})
    dist.barrier()
    return True


def stage_times(out: Path) -> list[dict]:
    """Seconds of every finished stage under `out` (seeds included), from the stage markers, which
    record the seconds of the call that ran the stage: [{"stage", "folder", "seconds"}] in pipeline
    order. Markers that do not read as klas wrote them are left out (a table, not a check)."""
    import math

    from klas.pipeline.config import STAGES

    rows = []
    for marker in sorted(Path(out).rglob(MARKER)):
        try:
            doc = read_json(marker, what="stage marker", error=ConfigError, inside=marker.parent, fix="")
        except ConfigError:
            continue
        seconds = doc.get("seconds")
        if (doc.get("stage") in STAGES and isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                and math.isfinite(seconds) and seconds >= 0):
            rows.append({"stage": doc["stage"], "folder": str(marker.parent.relative_to(out)), "seconds": float(seconds)})
    rows.sort(key=lambda r: (STAGES.index(r["stage"]), r["folder"]))
    return rows


def timing_table(rows: list[dict]) -> str:
    """`stage_times` as a plain-text table with the total."""
    width = max([len(r["folder"]) for r in rows] + [6])
    lines = ["seconds per stage (as each stage last ran):", f"  {'stage':<9} {'folder':<{width}} {'seconds':>9}"]
    lines += [f"  {r['stage']:<9} {r['folder']:<{width}} {r['seconds']:>9.1f}" for r in rows]
    lines.append(f"  {'total':<9} {'':<{width}} {sum(r['seconds'] for r in rows):>9.1f}")
    return "\n".join(lines)


def _record_times(out: Path, log, ranks: dict | None = None, extra: list[dict] = ()) -> None:
    """Writes `out`/timings.json (with `ranks`, the last call's `ranks_record`, when it ran on
    several) and prints the table (rank 0). `extra`: rows of work that is not a pipeline stage (the
    recovery test's training), after the stages'."""
    if not dist.is_main():
        return
    rows = stage_times(out) + list(extra)
    write_json_atomic(out / "timings.json", {"format": "klas-timings", "version": 1, "stages": rows,
                                             "total_seconds": sum(r["seconds"] for r in rows),
                                             **({"ranks": ranks} if ranks else {})})
    log(timing_table(rows))


def run_methods(cfg: RunConfig, methods_override: list[str] | None = None) -> list[str]:
    """Methods a run covers: the override, else select.compare when given, else select.method."""
    methods = methods_override or cfg.select.compare or [cfg.select.method]
    return list(dict.fromkeys(methods))


def prepare(cfg: RunConfig, *, progress: bool = True, log=print) -> tuple[list, str]:
    """The stages every method and the recovery test share: extraction, probes and scores under
    `out`/cache (each skipped when done). Returns the loaded anchors and this rank's device."""
    from klas.anchors import load_anchor

    cache = Path(cfg.out) / "cache"
    anchors = one_input([load_anchor(spec) for spec in cfg.anchors], log)
    dcfg, seed, device = cfg.data, cfg.seed, dist.rank_device(cfg.device)
    a = cfg.adapt
    if a.steps > 0:
        from klas.stitching.adapt import adapt_anchor

        def do_adapt():
            settings = a.settings(seed=seed, device=device, num_workers=cfg.finetune.num_workers)
            train = _images(cfg, "train", anchors[0], dcfg.train_limit)
            for anchor in anchors:
                stats = adapt_anchor(anchor.to(device), train, settings, _adapted_dir(cfg, anchor), progress=progress)
                log(f"[adapt] {anchor.name}: {_training_summary(stats)}")

        _stage(_adapted_dir(cfg), "adapt", stage_fingerprint(cfg, "adapt"), do_adapt, log)
        anchors = load_run_anchors(cfg)

    def do_extract():
        from klas.extraction.extract import extract

        for split, limit in (("train", dcfg.train_limit), ("val", dcfg.val_limit)):
            extract(anchors, dcfg.root, cache, splits=(split,), batch_size=cfg.extract.batch_size,
                    dtype=cfg.extract.dtype, device=device, shard_rows=cfg.extract.shard_rows,
                    val_fraction=dcfg.val_fraction, seed=seed,
                    limit=limit, num_workers=cfg.extract.num_workers, progress=progress)

    _stage(cache, "extract", stage_fingerprint(cfg, "extract"), do_extract, log)

    def do_probes():
        from klas.scoring.probes import probe_table, train_probes

        p = cfg.probes
        sets = train_probes([cache / a.name / "train" for a in anchors], [cache / a.name / "val" for a in anchors],
                            **p.to_json(), seed=seed, device=device, progress=progress,
                            curve=cache / "probes" / "training.csv")  # every `probes` setting by its own name
        if dist.is_main():
            for ps in sets:
                ps.save(cache / "probes")
        log(probe_table(sets))

    _stage(cache / "probes", "probes", stage_fingerprint(cfg, "probes"), do_probes, log)

    def do_score():
        from klas.scoring.scores import score

        s = cfg.score
        score(cache, cache / "probes", cache / "scores", anchors=[a.name for a in anchors], **s.to_json(),
              device=device)  # every `score` setting by its own name

    _stage(cache / "scores", "score", stage_fingerprint(cfg, "score"), do_score, log)

    return anchors, device


def _training_summary(stats: dict) -> str:
    """One log line for a finetune() result; a call that found its checkpoint already complete says so."""
    if stats.get("nothing_to_train"):
        return "nothing to train (the anchors are frozen and the set holds no stitch): the anchors as they are"
    if stats["resumed_from"] >= stats["steps"]:
        return f"{stats['steps']} steps, already done (checkpoint complete)"
    return (f"{stats['steps']} steps (from {stats['resumed_from']}), {stats['seconds']:.0f} s, "
            f"last loss {stats['final_loss']:.3f}")


def _adapted_dir(cfg: RunConfig, anchor=None) -> Path:
    root = Path(cfg.out) / "adapted"
    return root if anchor is None else root / anchor.name


def load_run_anchors(cfg: RunConfig) -> list:
    """The run's anchors: built from their specs, with their adapted weights when the config adapts
    them (klas.stitching.adapt; the adaptation stage must have run)."""
    from klas.stitching.adapt import apply_adapted
    from klas.anchors import load_anchor

    anchors = [load_anchor(spec) for spec in cfg.anchors]
    if cfg.adapt.steps > 0:
        anchors = [apply_adapted(a, _adapted_dir(cfg, a)) for a in anchors]
    return one_input(anchors)


def run(cfg: RunConfig, *, methods: list[str] | None = None, progress: bool = True, log=print) -> Path:
    """Runs every stage of `cfg` (validated, klas.pipeline.config) for each method and finetuning protocol;
    returns the report folder of the first protocol. With `seeds`, the whole comparison runs once
    per seed (under `out`/seed-<k>) and `out`/summary gathers each figure as mean and 95% interval.

    Joins torchrun's process group when launched by torchrun (klas.distributed); the caller may
    leave it with `klas.distributed.shutdown()`.
    """
    return _in_run_folder(cfg, log, lambda cfg, log: _run_seeds(cfg, methods, progress=progress, log=log))


RUN_LOCK = ".klas-run.lock"


def ranks_record(cfg: RunConfig, world_size: int) -> dict:
    """What a run on `world_size` ranks does with the config's batch sizes and learning rates: the
    batch sizes are global (one process's batch, each rank taking an equal slice) and the learning
    rates are used as written, so the results do not depend on the number of ranks."""
    sections = {"adapt": cfg.adapt, "probes": cfg.probes, "finetune": cfg.finetune, "recovery": cfg.recovery}
    return {"ranks": world_size,
            "global_batch_sizes": {k: v.batch_size for k, v in sections.items()},
            "batch_sizes_per_rank": {k: v.batch_size // world_size for k, v in sections.items()},
            "learning_rates": {k: v.lr for k, v in sections.items()}, "learning_rates_rescaled": False}


def ranks_line(cfg: RunConfig, world_size: int) -> str:
    """`ranks_record` as one log line."""
    r = ranks_record(cfg, world_size)
    batches = ", ".join(f"{k} {b} ({r['batch_sizes_per_rank'][k]} per rank)" for k, b in r["global_batch_sizes"].items())
    rates = ", ".join(f"{k} {v:g}" for k, v in r["learning_rates"].items())
    return (f"{world_size} ranks; global batch sizes: {batches}; learning rates as configured, not rescaled "
            f"({rates})")


def _in_run_folder(cfg: RunConfig, log, work: Callable, extra_times: Sequence[dict] = ()):
    """The one way into a run folder (`run`, `run_recovery`): joins torchrun's group, quiets the log
    of ranks other than 0, holds the folder's lock for the whole `work(log)`, then records the
    seconds of every stage (and the rows `work` adds to `extra_times`: work that is not a stage);
    returns what `work(cfg, log)` returns, `cfg` with its device resolved ("auto": a CUDA GPU when
    one is visible, else the CPU)."""
    import dataclasses

    from klas.compiling import compile_mode
    from klas.devices import check_device
    from klas.memory_format import memory_format_mode

    cfg = dataclasses.replace(cfg, device=check_device(cfg.device))
    dist.init_from_env(cfg.device, timeout_s=cfg.distributed.timeout_s)
    if not dist.is_main():
        log = _silent
    if dist.context().distributed:
        log(f"[ranks] {ranks_line(cfg, dist.context().world_size)}")
    with _one_writer(cfg), compile_mode(cfg.compile), memory_format_mode(cfg.memory_format):
        result = work(cfg, log)
        world = dist.context().world_size
        _record_times(Path(cfg.out), log, ranks_record(cfg, world) if world > 1 else None, extra=extra_times)
        return result


def _one_writer(cfg: RunConfig):
    """The run folder's lock, held by rank 0 for the whole run (klas.locking): a second `klas run` or
    `klas recovery` into the same `out` is refused with one line naming the first."""
    from klas.locking import hold_lock

    out = Path(cfg.out)
    return hold_lock(out / RUN_LOCK, what=f"the run folder {out}", enabled=dist.is_main(),
                     fix="wait for that run to finish, or give this one another `out`")


def _run_seeds(cfg: RunConfig, methods: list[str] | None, *, progress: bool, log) -> Path:
    """`run` with the lock held: one seed, or every seed and their summary."""
    if not cfg.seeds:
        return _run_one(cfg, methods, progress=progress, log=log)
    reports = {}
    for seed in cfg.seeds:
        one = cfg.replace(seed=seed, seeds=[], out=str(Path(cfg.out) / f"seed-{seed}"))
        log(f"== seed {seed} -> {one.out}")
        _run_one(one, methods, progress=progress, log=log)
        reports[seed] = Path(one.out) / "report"
    summary = Path(cfg.out) / "summary"
    if dist.is_main():
        from klas.evaluation.seeds import summarise_seeds, summary_lines

        doc = summarise_seeds(reports, cfg.finetune.protocols, summary)
        for line in summary_lines(doc):
            log(line)
        log(f"summary: {summary / 'summary.json'}")
    dist.barrier()
    return summary


def _run_one(cfg: RunConfig, methods: list[str] | None, *, progress: bool, log) -> Path:
    """One seed: the shared stages, then each protocol's finetuning and evaluation of every method,
    and one report per protocol under `out`/report/<protocol>."""
    from klas.evaluation.report import headline

    methods = run_methods(cfg, methods)
    out = Path(cfg.out)
    anchors, device = prepare(cfg, progress=progress, log=log)
    protocols = cfg.finetune.protocols
    if methods_needing_predictions(methods):
        from klas.scoring.scores import load_scores
        from klas.selection.select import anchor_chain

        chain = anchor_chain(load_scores(out / "cache" / "scores"), cfg.select.chain_rule)
        _predict(cfg, anchors, list(zip(chain, chain[1:])), device, progress=progress, log=log)
        dist.barrier()
    for method in methods:
        _select_stage(cfg, method, out, log)
    from klas.scoring.scores import load_scores

    sigma_last = load_scores(out / "cache" / "scores").sigma_last_block
    for name, d in sigma_last.items():
        log(f"Σ at the last block of {name}: {d['head']:.4f} with the head (Γ's), {d['last_probe']:.4f} with the "
            f"last block's probe (that probe vs the head: {d['last_probe_vs_head']:.4f})")
    for protocol in protocols:
        results, buckets = {}, {}
        for method in methods:
            results[method], buckets[method] = _run_method(cfg, method, protocol, anchors, out, device,
                                                           progress=progress, log=log)
        costs = {m: _selection_cost(out, m, protocol) for m in methods_needing_predictions(methods)}
        for m, c in costs.items():
            if c["fraction_of_finetuning"] is not None:
                log(f"[select] {m}: its predictions took {c['prediction_seconds']:.0f} s, "
                    f"{100 * c['fraction_of_finetuning']:.1f}% of its supernet's finetuning under {protocol} "
                    f"({c['finetune_seconds']:.0f} s)")
            elif c["trained_nothing"] and c["prediction_seconds"] is not None:
                log(f"[select] {m}: its predictions took {c['prediction_seconds']:.0f} s; its supernet trains "
                    f"nothing under {protocol} (no stitch, anchors frozen)")
        report = out / "report" / protocol
        if dist.is_main():
            from klas.evaluation.report import write_report

            write_report(results, report, title=f"{cfg.name} ({protocol} finetuning): " + " vs ".join(methods),
                         extra={"config": cfg.to_json(), "methods_run": methods, "protocol": protocol,
                                "sigma_last_block": sigma_last, "selection_cost": costs},
                         buckets=buckets, steps={m: cfg.finetune.steps for m in methods},
                         stitches_only=PROTOCOLS[protocol],
                         curves={m: _method_dirs(out, m, protocol)[1] / TRAINING_CSV for m in methods})
        dist.barrier()
        if not dist.is_main():
            continue
        doc = read_json(report / "report.json", what="report", error=CacheError, inside=report,
                        fix=f"delete {report} to write the report again")
        log(f"-- {protocol} finetuning ({'stitching layers only, anchors frozen' if PROTOCOLS[protocol] else 'anchors and stitching layers train'}); "
            f"FLOPs: {FLOPS_DEFINITION}")
        for m in methods:
            s = doc["methods"][m]
            within = s["spearman_gamma_top1_within_buckets"]
            log(f"{m}: {s['stitches']} stitches + {len(s['anchors'])} anchors ({s['steps_per_route']:.0f} steps per "
                f"route), AUC {s['auc']:.3f}, best top-1 {s['best_top1']:.2f}%, Spearman(Γ, top-1) within buckets "
                f"{'n/a' if within is None else f'{within:+.3f}'} over {s['spearman_buckets']} buckets; frontier "
                f"anchors: {', '.join(s['frontier_anchors']) or 'none'}")
        for c in doc["comparisons"]:
            log(headline(c))
        log(f"report: {report / 'report.json'}; plot: {report / 'accuracy_flops.png'}")
    return out / "report" / protocols[0]


def _selection_cost(out: Path, method: str, protocol: str) -> dict:
    """What a method's own selection cost (its recorded prediction seconds) against the seconds its
    supernet's finetuning under `protocol` took (the finetune stage's marker). No fraction where the
    supernet trained nothing (no stitch, anchors frozen): `trained_nothing` says so."""
    sel_dir, net_dir, _ = _method_dirs(out, method, protocol)
    selection = read_selection(sel_dir / "selection.json")
    predicted = selection.notes.get("prediction_seconds")
    finetuned = next((r["seconds"] for r in stage_times(net_dir) if r["stage"] == "finetune"), None)
    return cost_against_finetuning(predicted, finetuned, trained_nothing=PROTOCOLS[protocol] and not selection.selected)


def cost_against_finetuning(predicted, finetuned: float | None, trained_nothing: bool) -> dict:
    """A selection's prediction seconds (as recorded: checked here) against its supernet's
    finetuning seconds; no fraction where either is unknown or the supernet trained nothing."""
    ok = isinstance(predicted, (int, float)) and not isinstance(predicted, bool) and predicted >= 0
    return {"prediction_seconds": predicted if ok else None, "finetune_seconds": finetuned,
            "trained_nothing": trained_nothing,
            "fraction_of_finetuning": predicted / finetuned if ok and finetuned and not trained_nothing else None}


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def one_input(anchors: list, log=None) -> list:
    """The anchors, made to take one image batch: where their input normalisations differ, each moves
    its own into its stem (`Anchor.normalise_in_stem`; weights and outputs unchanged) and they all take
    RGB in [0, 1]. Input sizes must agree: a stitched supernet feeds one image to every anchor."""
    first = anchors[0]
    for a in anchors[1:]:
        if tuple(a.input_size) != tuple(first.input_size):
            raise ConfigError(f"anchors {first.name} and {a.name} expect different input sizes "
                              f"({tuple(first.input_size)} against {tuple(a.input_size)}); a stitched supernet "
                              "feeds one image to both: choose anchors of one input size")
    if len({(a.mean, a.std) for a in anchors}) > 1:
        moved = [a.name for a in anchors if a.normalise_in_stem()]
        if log is not None:
            which = f"{moved[0]} normalises inside its stem" if len(moved) == 1 else \
                f"{', '.join(moved)} normalise inside their stems"
            log(f"[anchors] {which}: the anchors were trained with different input normalisations, so one "
                "batch of RGB images in [0, 1] feeds them all")
    return anchors


def _select_options(cfg: RunConfig):
    """The selection methods' options of this run (klas.selection.methods.SelectOptions)."""
    from klas.predictions import PREDICTIONS
    from klas.selection.methods import SelectOptions

    out = Path(cfg.out)
    return SelectOptions.from_config(cfg.select, seed=cfg.seed, cache=out / "cache", predictions=out / PREDICTIONS,
                                     total_steps=cfg.finetune.steps)


def method_settings(cfg: RunConfig, method: str) -> dict:
    """The settings only `method` reads (klas-budget's prediction and budget); they enter that method's
    own stage fingerprints. Empty for every other method, whose fingerprints stay as they were."""
    from klas.selection.methods import get_method

    if not get_method(method).needs_predictions:
        return {}
    s, f = cfg.select, cfg.finetune
    return {"select.budget_min_route_steps": s.budget_min_route_steps,
            "select.budget_max_error_ratio": s.budget_max_error_ratio, "select.predict_images": s.predict_images,
            "finetune.steps": f.steps, "finetune.calibration_images": f.calibration_images}


def _predict(cfg: RunConfig, anchors, hops: Sequence[tuple[str, str]], device: str, *, progress: bool, log) -> None:
    """Each hop's predicted stitch accuracies under `out`/predictions (klas.evaluation.predict),
    reused when their file records the same anchors, samples and settings."""
    from klas.evaluation.predict import load_or_predict
    from klas.predictions import PREDICTIONS, prediction_path
    from klas.scoring.scores import load_scores
    from klas.selection.budget import hop_candidates

    if not dist.is_main():
        return
    scores = load_scores(Path(cfg.out) / "cache" / "scores")
    by_name = {a.name: a for a in anchors}
    train = _images(cfg, "train", anchors[0], cfg.data.train_limit)
    val = _images(cfg, "val", anchors[0], cfg.select.predict_images or cfg.data.val_limit)
    for f, g in hops:
        configs = [(c.i, c.j) for c in hop_candidates(scores, f, g, cfg.select.flops_range)]
        load_or_predict(prediction_path(Path(cfg.out) / PREDICTIONS, f, g), by_name[f].to(device),
                        by_name[g].to(device), configs, train, val, calibration_images=cfg.finetune.calibration_images,
                        seed=cfg.seed, device=device, eval_batch=cfg.evaluate.batch_size, progress=progress, log=log)


def _selection(cfg: RunConfig, method: str, cache: Path):
    from klas.selection.methods import run_method
    from klas.scoring.scores import load_scores

    return run_method(method, load_scores(cache / "scores"), _select_options(cfg))


def _build_supernet(anchors, selection: Selection, which: str = "chain"):
    """The supernet of a selection: its stitches, and the anchors on its chain (METHOD.md §5.5: anchors
    the chain skips are not routes), or every anchor of the run (`which="all"`)."""
    from klas.stitching.stitch import StitchedSupernet

    if which == "chain":
        anchors = [a for a in anchors if a.name in selection.chain]
    return StitchedSupernet(anchors, [c.route for c in selection.selected])


def _images(cfg: RunConfig, split: str, anchor, limit):
    from klas.extraction.data import ImageDataset, split_for_anchor

    source, indices = split_for_anchor(cfg.data.root, split, anchor, val_fraction=cfg.data.val_fraction,
                                       seed=cfg.seed, limit=limit)
    return ImageDataset(source, indices, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)


def _method_dirs(out: Path, method: str, protocol: str) -> tuple[Path, Path, Path]:
    """(selection, supernet, evaluation) folders of one method under one finetuning protocol."""
    here = out / "methods" / method
    return here / "selection", here / protocol / "supernet", here / protocol / "evaluation"


def _select_stage(cfg: RunConfig, method: str, out: Path, log) -> None:
    """The selection of one method (shared by every finetuning protocol)."""
    sel_dir = _method_dirs(out, method, "")[0]

    def do_select():
        from klas.plots import selection_scatter

        sel = _selection(cfg, method, out / "cache")
        write_json_atomic(sel_dir / "selection.json", sel.to_json())
        selection_scatter(sel, sel_dir / "selection.png")
        log(f"[select] {method}: {len(sel.selected)} stitches over {' -> '.join(sel.chain)}")
        from klas.selection.budget import describe

        for line in describe(sel.notes):
            log(f"[select] {line}")

    _stage(sel_dir, "select", stage_fingerprint(cfg, "select", method, method_settings(cfg, method)), do_select, log,
           every_rank=False)


def _run_method(cfg: RunConfig, method: str, protocol: str, anchors, out: Path, device: str, *, progress: bool,
                log) -> tuple[list, dict]:
    """Finetuning and evaluation of one method's supernet under one protocol; returns the route
    results and each scored route's bucket (for the within-bucket diagnostics)."""
    from klas.evaluation.evaluate import RouteResult, evaluate_routes
    from klas.stitching.finetune import CHECKPOINT, finetune, load_finetuning_checkpoint

    sel_dir, net_dir, eval_dir = _method_dirs(out, method, protocol)
    selection = read_selection(sel_dir / "selection.json")
    specs = {a.name: a.spec for a in anchors}
    for a in selection.anchors:  # a selection copied from another run names other anchors
        if specs.get(a.name) != a.spec:
            raise CacheError(f"{sel_dir / 'selection.json'} selects among other anchors than this run's ({a.name!r} is "
                             f"{a.spec!r} there, {specs.get(a.name)!r} here); delete {sel_dir} to select again")
    f = cfg.finetune
    settings = f.settings(seed=cfg.seed, device=device, stitches_only=PROTOCOLS[protocol])
    variant = f"{method}/{protocol}"

    def fresh_supernet():
        return _build_supernet(load_run_anchors(cfg), selection, f.anchors)

    def do_finetune():
        net = fresh_supernet()
        train = _images(cfg, "train", anchors[0], cfg.data.train_limit)
        if not (net_dir / CHECKPOINT).is_file():  # a resumed run takes the stitches from its checkpoint
            calib = torch.utils.data.Subset(train, range(min(f.calibration_images, len(train))))
            images = torch.stack([x for x, _ in calib]).to(device)
            net.to(device).init_stitches(images, seed=cfg.seed)
        stats = finetune(net, train, settings, net_dir, progress=progress)
        log(f"[finetune] {variant}: {_training_summary(stats)}")

    _stage(net_dir, "finetune", stage_fingerprint(cfg, "finetune", variant, method_settings(cfg, method)), do_finetune,
           log)
    e = cfg.evaluate

    eval_fingerprint = stage_fingerprint(cfg, "evaluate", variant, method_settings(cfg, method))

    def do_evaluate():
        net = fresh_supernet()
        state = load_finetuning_checkpoint(net_dir / CHECKPOINT, net, settings)  # this protocol's, these routes'
        if int(state["step"]) != settings.steps:
            raise KlasError(f"{net_dir / CHECKPOINT} holds {state['step']} of {settings.steps} finetuning steps; delete "
                            f"{net_dir} to finetune again")
        try:
            net.load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError):
            raise KlasError(f"{net_dir / CHECKPOINT} does not fit this selection's supernet; delete {net_dir} to "
                            "finetune again") from None
        data = _images(cfg, e.split, anchors[0], cfg.data.test_limit if e.split == "test" else cfg.data.val_limit)
        start, count = dist.even_share(len(data))  # this rank's images; evaluate_routes sums the counts
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(start, start + count)),
                                             batch_size=e.batch_size, num_workers=f.num_workers)
        gammas = {c.route.name: _json_number(c.gamma) for c in selection.selected}
        results = evaluate_routes(net, loader, device=device, progress=progress and dist.is_main(), gammas=gammas)
        if dist.is_main():
            write_json_atomic(eval_dir / "evaluation.json", {"method": method, "protocol": protocol, "split": e.split,
                                                             "fingerprint": eval_fingerprint,
                                                             "routes": [r.to_json() for r in results]})

    _stage(eval_dir, "evaluate", eval_fingerprint, do_evaluate, log)
    path = eval_dir / "evaluation.json"
    fix = f"delete {path.parent} to evaluate again"
    doc = read_json(path, what="evaluation file", error=CacheError, inside=path.parent, fix=fix)
    recorded = {k: doc.get(k) for k in ("method", "protocol", "split", "fingerprint")}
    want = {"method": method, "protocol": protocol, "split": e.split, "fingerprint": eval_fingerprint}
    if recorded != want:
        differ = ", ".join(f"{k} {recorded[k]!r} (this run: {want[k]!r})" for k in want if recorded[k] != want[k])
        raise CacheError(f"{path} is the evaluation of another method, protocol or config ({differ}); {fix}")
    try:
        results = [RouteResult.from_json(r) for r in doc["routes"]]
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"{path}: malformed route entries; {fix}") from None
    routes = [r.name for r in _build_supernet(anchors, selection, f.anchors).routes]
    if [r.name for r in results] != routes:
        raise CacheError(f"{path} evaluates other routes than this selection's supernet; {fix}")
    buckets = {c.route.name: (c.source, c.target, c.bucket) for c in selection.selected}
    return results, buckets


def _json_number(x: float) -> float | None:
    """NaN (an unscored stitch's Γ) as JSON's null."""
    return None if x != x else x


def _resolve_pair(cfg: RunConfig, anchors, pair: Sequence[str]):
    """The two anchors a --pair names (by spec or by name), cheaper first."""
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError(f"--pair names two different anchors (SOURCE,TARGET), got {list(pair)}")
    found = []
    for want in pair:
        match = [a for a in anchors if want in (a.name, a.spec)]
        if not match:
            raise ConfigError(f"--pair: {want!r} is not an anchor of this config (have "
                              f"{', '.join(a.name for a in anchors)})")
        found.append(match[0])
    return sorted(found, key=lambda a: a.flops.total)


def run_recovery(cfg: RunConfig, pair: Sequence[str], *, progress: bool = True, log=print) -> Path:
    """The recovery test on one anchor pair of `cfg` (klas.evaluation.recovery); returns its folder under
    `out`/recovery holding recovery.json, recovery.csv and recovery.png."""
    times: list[dict] = []
    return _in_run_folder(cfg, log, lambda cfg, log: _recovery(cfg, pair, progress=progress, log=log, times=times),
                          extra_times=times)


def _recovery(cfg: RunConfig, pair: Sequence[str], *, progress: bool, log, times: list[dict]) -> Path:
    """`run_recovery` with the run folder's lock held; appends its training's seconds to `times`."""
    from klas.plots import recovery_plot
    from klas.evaluation.recovery import (RecoverySettings, combine_repeats, method_picks, recovery_report,
                                          train_configurations)
    from klas.scoring.scores import load_scores
    from klas.selection.select import first_bucket_count, pair_candidates

    began = time.perf_counter()
    anchors, device = prepare(cfg, progress=progress, log=log)
    f, g = _resolve_pair(cfg, anchors, pair)
    cache = Path(cfg.out) / "cache"
    scores = load_scores(cache / "scores")
    configs, lo, hi = pair_candidates(scores, f.name, g.name, flops_range=cfg.select.flops_range)
    r = cfg.recovery
    out = Path(cfg.out) / "recovery" / f"{f.name}__{g.name}"
    train = _images(cfg, "train", f, cfg.data.train_limit)
    test = _images(cfg, "test", f, r.test_limit or cfg.data.test_limit)
    settings = RecoverySettings.sharing(r, seed=cfg.seed, test_images=len(test))
    runs = []
    for repeat in range(r.repeats):  # each repeat its own seed: calibration draw, batch order
        runs.append(train_configurations(f.to(device), g.to(device), [(c.i, c.j) for c in configs], train, test,
                                         dataclasses.replace(settings, seed=cfg.seed + repeat), out, device=device,
                                         progress=progress, eval_batch=cfg.evaluate.batch_size, log=log, repeat=repeat))
    results, noise = combine_repeats(runs)
    if r.delta_from_noise:
        settings = dataclasses.replace(settings, delta=round(noise["delta_95"], 4))
    if methods_needing_predictions(r.methods):
        _predict(cfg, anchors, [(f.name, g.name)], device, progress=progress, log=log)
    if not dist.is_main():
        return out
    picks = method_picks(scores, f.name, g.name, r.methods, evaluated=[(c.i, c.j) for c in configs],
                         options=_select_options(cfg), random_seeds=r.random_seeds)
    report = recovery_report(results, picks, settings, lo, hi, first_bucket_count(scores.anchor(g.name)),
                             anchors=_anchors_on(test, (f, g), cfg.evaluate.batch_size, device))
    trained_s = {(rep, res["i"]): res["seconds_for_source_block"] for rep, run in enumerate(runs) for res in run.values()}
    report.update(pair={"source": f.name, "target": g.name, "source_spec": f.spec, "target_spec": g.spec},
                  test_images=len(test), train_images=len(train), noise=noise,
                  delta_source="measured noise (noise.delta_95)" if r.delta_from_noise else "recovery.delta",
                  wall_seconds={"training_and_evaluation": sum(trained_s.values()),
                                "this_call": time.perf_counter() - began})
    write_json_atomic(out / "recovery.json", report)
    _write_recovery_csv(report, out / "recovery.csv")
    recovery_plot(report, out / "recovery.png")
    log(recovery_table(report))
    times.append({"stage": "recovery", "folder": str(out.relative_to(cfg.out)), "seconds": float(sum(trained_s.values()))})
    log(f"recovery: {out / 'recovery.json'}; plot: {out / 'recovery.png'}")
    return out


def _anchors_on(test, anchors, batch_size: int, device) -> dict[str, dict]:
    """Each anchor's top-1 on the recovery test's images, with its FLOPs (the frontier's ends); the
    images are decoded once for both anchors."""
    from klas.evaluation.anchor_eval import anchor_correct
    from klas.extraction.data import DecodedOnce

    image = test[0][0]
    batches = DecodedOnce(lambda: torch.utils.data.DataLoader(test, batch_size=batch_size),
                          len(test) * image.numel() * image.element_size())
    out = {}
    for a in anchors:
        correct, total = anchor_correct(a.to(device).eval(), batches, device)
        out[a.name] = {"flops": int(a.flops.total), "top1": 100.0 * correct / max(total, 1), "correct": correct,
                       "total": total}
    return out


def _write_recovery_csv(report: dict, path: Path) -> None:
    import csv

    from klas.files import atomic_path

    methods = [m for m in report["methods"] if "picked" in report["methods"][m]]
    picked = {m: {tuple(p) for p in report["methods"][m]["picked"]} for m in methods}
    frontier = {tuple(c) for c in report.get("frontier", [])}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["i", "j", "flops", "top1_init", "top1", "bucket", "good", "on_frontier",
                    *[f"picked_{m}" for m in methods]])
        for c in report["configurations"]:
            w.writerow([c["i"], c["j"], c["flops"], f"{c['top1_init']:.2f}", f"{c['top1']:.2f}", c["bucket"],
                        int(c["good"]), int((c["i"], c["j"]) in frontier),
                        *[int((c["i"], c["j"]) in picked[m]) for m in methods]])


def _frontier_cell(s: dict, fmt) -> str:
    p = s.get("random_sets_at_least_as_much_frontier")
    return fmt(s.get("frontier_found"), ".1f") + ("" if p is None else f" ({p:.3f})")


def _frontier_line(report: dict) -> str:
    anchors = ", ".join(f"{name} {a['top1']:.2f}%" for name, a in report["anchors"].items())
    frontier = ", ".join(f"({i}, {j})" for i, j in report["frontier"]) or "none"
    return (f"  frontier (the configurations that every route of at most their FLOPs trails; the anchors on "
            f"the same images: {anchors}): {frontier}")


def recovery_table(report: dict) -> str:
    """The recovery test's summary as a plain-text table."""
    def fmt(v, spec=".2f"):
        if isinstance(v, dict):
            if v.get("mean") is None:
                return "n/a"
            ci = f" [{v['low']:{spec}}, {v['high']:{spec}}]" if v.get("low") is not None else ""
            return f"{v['mean']:{spec}}{ci}"
        return "n/a" if v is None else f"{v:{spec}}"

    n_good = len(report["good_set"])
    lines = [f"recovery test {report['pair']['source']} -> {report['pair']['target']}: "
             f"{len(report['configurations'])} configurations, {n_good} good (δ = {report['settings']['delta']} "
             f"points, {report['buckets']} FLOPs buckets)",
             *([f"  noise over {report['noise']['repeats']} repeats: {report['noise']['sd_points']:.2f} points "
                f"(sd of one configuration); two configurations' means differ at 95% beyond "
                f"{report['noise']['delta_95']:.2f} points; δ from {report.get('delta_source', 'recovery.delta')}"]
              if report.get("noise") else []),
             *([_frontier_line(report)] if report.get("anchors") else []),
             f"  {'method':<14} {'picks':>6} {'precision':>22} {'recall':>22} {'pts lost/pick':>20} {'ρ(score,top1)':>14} "
             f"{'P(random >=)':>13}" + (f" {'frontier (P)':>15} {'> cheaper':>10}" if report.get("anchors") else "")]
    for m, s in report["methods"].items():
        p = s.get("random_sets_at_least_as_good")
        vs_random = "" if p is None else f"{p:.3f}" + (" beats" if s.get("beats_random") else "")
        lines.append(f"  {m:<14} {fmt(s['picks'], '.1f'):>6} {fmt(s['precision']):>22} {fmt(s['recall']):>22} "
                     f"{fmt(s['mean_points_lost_per_pick']):>20} {fmt(s.get('spearman_score_top1_within_buckets')):>14} "
                     f"{vs_random:>13}" + (f" {_frontier_cell(s, fmt):>15} "
                                            f"{fmt(s.get('above_cheaper_anchor'), '.1f'):>10}" if report.get("anchors") else ""))
    lines.append("  P(random >=): the exact share of random sets of the method's size, among the evaluated "
                 "configurations, with at least as many good ones; 'beats' below 5%. The random row is the mean "
                 "of its draws with the interval of that mean, a description of random picking, not a test"
                 + ("; frontier: picks on the frontier (P: the same exact share for them); > cheaper: picks more "
                    "accurate than the cheaper anchor"
                    if report.get("anchors") else ""))
    return "\n".join(lines)
