"""The recovery test (the KLAS paper's Table 1): does a selection method pick the good stitches?

For one anchor pair (f, g) every grid-valid configuration (i, j) inside the pair's FLOPs range is
stitched, initialised by least squares and finetuned alone with the same small budget (the
stitching layer alone, both anchors frozen, so that configurations of one source block can share
its front), then evaluated on the test split: the ground-truth
accuracy of every configuration, and for free its accuracy right after the least-squares fit.

The good set: the FLOPs range split into m_g − 1 equal buckets (the first bucket count of KLAS's
coverage rule); in each bucket the best configuration and those within `delta` points of it. Every
method's picks on this pair are then scored against it: precision, recall, the accuracy lost
against the best configuration of the pick's bucket, and, for methods that score configurations,
the Spearman correlation between score and accuracy within each bucket (lower Γ should mean higher
accuracy, so a good score correlates negatively).

Work is shared and resumable: the configurations of one source block i are trained together, in
lock-step on the same batches, with f's frozen front (stem + blocks 1..i) computed once per batch
for all of them; each configuration's result is written to its own file as soon as it is known, so
a rerun trains only what is missing. Under torchrun the source blocks are shared out across ranks.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from klas import distributed as dist
from klas.compiling import compiled_parts, should_compile
from klas.memory_format import channels_last_models
from klas.precision import training_autocast
from klas.extraction.data import DecodedOnce
from klas.limits import FLOPS_UNIT
from klas.errors import CacheError, UsageError
from klas.files import write_json_atomic
from klas.progress import progress_bar
from klas.reading import read_json, whole_number
from klas.evaluation.recovery_settings import RecoverySettings
from klas.evaluation.stats import mean_interval, random_sets_at_least_as_good, within_group_spearman

__all__ = ["RecoverySettings", "train_configurations", "combine_repeats", "good_set", "score_method", "against_random",
           "recovery_report", "method_picks", "frontier_of", "frontier_scores",
           "mean_interval", "RANDOM"]

RANDOM = "random"
SNNET = "snnet-nearest"


def _result_path(out: Path, i: int, j: int, repeat: int = 0) -> Path:
    return out / "configurations" / (f"i{i:03d}_j{j:03d}.json" if repeat == 0 else f"i{i:03d}_j{j:03d}_r{repeat}.json")


def result_inputs(f, g, train, test, settings: RecoverySettings, repeat: int) -> dict | None:
    """What every configuration's result of one training pass is computed from: the two anchors
    (names and weights digests), the training and test samples (digests, in order), the settings and
    the repeat. A result is reused only when it recorded exactly this; None when a dataset cannot
    say which samples it holds (then nothing is reused)."""
    digests = [getattr(d, "samples_digest", None) for d in (train, test)]
    if not all(callable(d) for d in digests):
        return None
    return {"source": f.name, "target": g.name, "source_weights": f.weights_digest(),
            "target_weights": g.weights_digest(), "train_samples": digests[0](), "test_samples": digests[1](),
            "repeat": repeat, "settings": settings.fingerprint()}


def _count(value) -> int | None:
    return value if whole_number(value) else None


def result_problem(doc: dict, i: int, j: int, inputs: dict | None) -> str | None:
    """Why a configuration's result file cannot stand for (i, j) with these inputs (None: it can).

    Checked: its own identity (i, j), what it was computed from (`result_inputs`), every field's type,
    and that each top-1 is the one its own correct / total counts give."""
    from klas.evaluation.evaluate import counts_agree

    if inputs is None:
        return "the datasets record no sample digests"
    if doc.get("i") != i or doc.get("j") != j or type(doc.get("i")) is not int or type(doc.get("j")) is not int:
        return f"it is the result of configuration ({doc.get('i')!r}, {doc.get('j')!r})"
    if doc.get("inputs") != inputs:
        return "it was computed from other weights, samples or settings"
    counts = [_count(doc.get(k)) for k in ("correct", "total", "correct_init", "flops")]
    if any(c is None for c in counts) or counts[0] > counts[1] or counts[2] > counts[1]:
        return "its counts are missing or malformed"
    for key, correct in (("top1", counts[0]), ("top1_init", counts[2])):
        v = doc.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not counts_agree(v, correct, counts[1]):
            return f"its {key} disagrees with its own counts"
    if inputs["settings"].get("test_images") and counts[1] != inputs["settings"]["test_images"]:
        return f"it counts {counts[1]} test images, not {inputs['settings']['test_images']}"
    return None


def _load_result(path: Path, i: int, j: int, inputs: dict | None) -> tuple[dict | None, str | None]:
    """(the finished result of (i, j) computed from `inputs`, None) or (None, why it is not reused;
    None when there is no file)."""
    if not os.path.lexists(path):
        return None, None
    try:
        doc = read_json(path, what="recovery result", error=CacheError, inside=path.parent, fix="")
    except CacheError as e:
        return None, str(e).rstrip("; ")
    problem = result_problem(doc, i, j, inputs)
    return (None, f"{path}: {problem}") if problem else (doc, None)


def train_configurations(f, g, configs: Sequence[tuple[int, int]], train, test, settings: RecoverySettings,
                         out: str | Path, *, device: str = "cpu", progress: bool = True, eval_batch: int = 500,
                         log=print, repeat: int = 0) -> dict[tuple[int, int], dict]:
    """Trains and evaluates every configuration (i, j) of source f and target g (Anchors); returns
    ``{(i, j): result}`` with top1_init (after the least-squares fit), top1 (after finetuning), FLOPs.

    train, test: datasets of (image, label) for the anchors' preprocessing. Results are files under
    `out`/configurations; a configuration with a finished result is not trained again. `repeat` k > 0
    keeps its results apart (a repeat of the same test with another `settings.seed`).
    """
    from klas.evaluation.predict import count_correct, least_squares_stitches

    out = Path(out)
    (out / "configurations").mkdir(parents=True, exist_ok=True)
    inputs = result_inputs(f, g, train, test, settings, repeat)
    done: dict[tuple[int, int], dict] = {}
    stale = []
    for i, j in configs:
        r, why = _load_result(_result_path(out, i, j, repeat), i, j, inputs)
        if r is not None:
            done[(i, j)] = r
        elif why is not None:
            stale.append(why)
    if stale:
        log(f"[recovery] {len(stale)} earlier result(s) not reused, trained again (e.g. {stale[0]})")
    todo = [c for c in configs if c not in done]
    by_source: dict[int, list[int]] = {}
    for i, j in todo:
        by_source.setdefault(i, []).append(j)
    ctx = dist.context()
    blocks = sorted(by_source)[ctx.rank::ctx.world_size]
    if todo:
        log(f"[recovery] {len(done)} of {len(configs)} configurations done; training {len(todo)} "
            f"(source blocks {blocks})")
    if blocks:  # calibration images decoded, batch order drawn, only when this rank trains something
        gen = torch.Generator().manual_seed(settings.seed)
        calib_idx = torch.randperm(len(train), generator=gen)[:settings.calibration_images].tolist()
        calib = torch.stack([train[k][0] for k in calib_idx]).to(device)
        order = torch.randint(0, len(train), (settings.steps, settings.batch_size), generator=gen)
        image_bytes = calib[0].numel() * calib.element_size()
        # every source block reads the same test batches and the same step batches: decoded once
        test_batches = DecodedOnce(lambda: torch.utils.data.DataLoader(test, batch_size=eval_batch),
                                   len(test) * image_bytes)
        step_batches = DecodedOnce(lambda: torch.utils.data.DataLoader(train, batch_sampler=order.tolist()),
                                   order.numel() * image_bytes)
    with channels_last_models([f, g], device):  # stored channels last where that is faster (klas.memory_format)
        for i in blocks:
            began = time.perf_counter()
            js = by_source[i]
            net, back = least_squares_stitches(f, g, i, js, calib, seed=settings.seed, device=device)
            stitches = list(net.stitches)
            trained = [p for s in stitches for p in s.parameters()]  # the stitching layers alone: anchors frozen
            for p in trained:
                p.requires_grad_(True)

            @torch.no_grad()
            def test_fronts():
                for x, y in test_batches:
                    yield f.forward_front(x.to(device), i), y.to(device)

            parts = [*f.blocks, *g.blocks]  # compiled where the compile mode asks (klas.compiling)
            inference = should_compile(training=False, image_passes=len(test) * (1 + len(js)))
            with torch.no_grad(), compiled_parts(parts, inference):
                init = count_correct(test_fronts, stitches, back)
            opt, sched = settings.optimizer(trained)  # the same AdamW and schedule as every training
            bar = progress_bar(total=settings.steps, desc=f"recovery i={i} ({len(js)} stitches)", unit="step",
                               disable=not progress or not dist.is_main())
            training = should_compile(training=True, image_passes=settings.steps * settings.batch_size)
            with compiled_parts(parts, training):
                losses = []
                for step, (x, y) in enumerate(step_batches):  # a whole pass, so that the batches are kept for the next block
                    bar.update(1)
                    x, y = x.to(device), y.to(device)
                    with training_autocast(settings.precision, device):
                        with torch.no_grad():
                            h = f.forward_front(x, i)
                        loss = sum(torch.nn.functional.cross_entropy(back(s, st(h)), y) for s, st in enumerate(stitches))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(loss.detach() / len(stitches))  # read back every 20 steps, not one device sync a step
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
            bar.close()
            with torch.no_grad(), compiled_parts(parts, inference):
                final = count_correct(test_fronts, stitches, back)
            seconds = time.perf_counter() - began
            for s, j in enumerate(js):
                k = len(net.anchor_names) + s
                result = {
                    "i": i, "j": j, "flops": net.route_flops(k), "top1_init": 100.0 * init[s][0] / max(init[s][1], 1),
                    "top1": 100.0 * final[s][0] / max(final[s][1], 1), "correct": final[s][0], "total": final[s][1],
                    "correct_init": init[s][0], "final_loss": float(losses[-1]) if losses else None,
                    "seconds_for_source_block": seconds, "inputs": inputs,
                }
                write_json_atomic(_result_path(out, i, j, repeat), result)
                done[(i, j)] = result
            log(f"[recovery] source block {i}: {len(js)} configurations in {seconds:.0f} s, top-1 "
                f"{min(done[(i, j)]['top1'] for j in js):.2f}..{max(done[(i, j)]['top1'] for j in js):.2f}%")
    dist.barrier()
    for i, j in configs:  # other ranks' results
        if (i, j) not in done:
            r, why = _load_result(_result_path(out, i, j, repeat), i, j, inputs)
            if r is None:
                raise CacheError(f"{why or _result_path(out, i, j, repeat)} (missing or unusable after every rank "
                                 "finished); run the same command again to train it")
            done[(i, j)] = r
    return done


def combine_repeats(runs: Sequence[dict[tuple[int, int], dict]]) -> tuple[dict[tuple[int, int], dict], dict | None]:
    """Several repeats of `train_configurations` -> (one result per configuration with top1 and
    top1_init the means over repeats, each repeat's kept beside them; the noise measured), or the
    single run unchanged and None.

    Noise: sd_points, the pooled standard deviation of one configuration's top-1 from repeat to
    repeat (training noise: every repeat counts on the same test images); delta_95, the 95% half-width
    of the difference between two configurations' means, 1.96·√(2/R)·sd: a configuration within it
    of its bucket's best cannot be told apart from the best.
    """
    if len(runs) == 1:
        return dict(runs[0]), None
    out = {}
    variances = []
    for c, first in runs[0].items():
        top1 = [r[c]["top1"] for r in runs]
        init = [r[c]["top1_init"] for r in runs]
        mean = sum(top1) / len(top1)
        variances.append(sum((a - mean) ** 2 for a in top1) / (len(top1) - 1))
        out[c] = {**first, "top1": mean, "top1_init": sum(init) / len(init), "top1_repeats": top1,
                  "top1_init_repeats": init, "correct": sum(r[c]["correct"] for r in runs),
                  "total": sum(r[c]["total"] for r in runs)}
    sd = math.sqrt(sum(variances) / len(variances)) if variances else 0.0
    return out, {"repeats": len(runs), "configurations": len(variances), "sd_points": sd,
                 "delta_95": 1.96 * math.sqrt(2.0 / len(runs)) * sd}


# -- scoring a method's picks against the ground truth -------------------------------------------

def buckets_of(flops: dict[tuple[int, int], int], lo: float, hi: float, count: int) -> dict[tuple[int, int], int]:
    """Equal-width FLOPs bucket of each configuration over [lo, hi] (the selection's bucketing)."""
    from klas.selection.select import bucket_index

    return {c: bucket_index(v, lo, hi, count) for c, v in flops.items()}


def _best_per_bucket(acc: dict, bucket: dict) -> dict[int, float]:
    """The best accuracy of each bucket."""
    best: dict[int, float] = {}
    for c, a in acc.items():
        best[bucket[c]] = max(best.get(bucket[c], -1.0), a)
    return best


def good_set(acc: dict[tuple[int, int], float], bucket: dict[tuple[int, int], int], delta: float) -> set:
    """Per bucket: the best configuration and those within `delta` points of it."""
    best = _best_per_bucket(acc, bucket)
    return {c for c, a in acc.items() if a >= best[bucket[c]] - delta}


def frontier_of(acc: dict[tuple[int, int], float], flops: dict[tuple[int, int], int],
                anchors: Sequence[dict]) -> set:
    """The configurations on the accuracy-FLOPs frontier (`pareto_frontier`) of every route the test
    measured: the configurations and the two anchors (each {"flops", "top1"}, on the same test images)."""
    from klas.evaluation.evaluate import pareto_frontier

    routes = [(c, flops[c], a) for c, a in acc.items()] + [(None, x["flops"], x["top1"]) for x in anchors]
    on = pareto_frontier([(f, a) for _, f, a in routes])
    return {routes[k][0] for k in on if routes[k][0] is not None}


def frontier_scores(picks: Sequence[tuple[int, int]], acc: dict, frontier: set, cheaper_top1: float) -> dict:
    """How much of a pick set a user would keep: picks on the frontier (of how many), and picks more
    accurate than the cheaper anchor (a stitch below it is a costlier, worse route)."""
    inside = [c for c in dict.fromkeys(picks) if c in acc]
    found = len([c for c in inside if c in frontier])
    return {"frontier_found": found, "frontier": len(frontier),
            "frontier_recall": found / len(frontier) if frontier else None,
            "above_cheaper_anchor": len([c for c in inside if acc[c] > cheaper_top1])}


def score_method(picks: Sequence[tuple[int, int]], acc: dict, bucket: dict, good: set,
                 scores: dict | None = None) -> dict:
    """Precision, recall, accuracy lost and within-bucket Spearman(score, accuracy) of one method."""
    inside = [c for c in dict.fromkeys(picks) if c in acc]
    hit = [c for c in inside if c in good]
    best = _best_per_bucket(acc, bucket)
    lost = [best[bucket[c]] - acc[c] for c in inside]
    per_bucket_best_pick = {}
    for c in inside:
        b = bucket[c]
        per_bucket_best_pick[b] = max(per_bucket_best_pick.get(b, -1.0), acc[c])
    out = {
        "picks": len(inside), "picks_outside_ground_truth": len(set(picks)) - len(inside), "good_found": len(hit),
        "precision": len(hit) / len(inside) if inside else None, "recall": len(hit) / len(good) if good else None,
        "mean_points_lost_per_pick": sum(lost) / len(lost) if lost else None,
        "buckets_covered": len(per_bucket_best_pick), "buckets": len(best),
        "mean_points_lost_per_covered_bucket": (sum(best[b] - a for b, a in per_bucket_best_pick.items())
                                                / len(per_bucket_best_pick)) if per_bucket_best_pick else None,
        "spearman_score_top1_within_buckets": None,
    }
    if scores:
        groups = {b: [(scores[c], acc[c]) for c in acc if bucket[c] == b and c in scores and math.isfinite(scores[c])]
                  for b in sorted(set(bucket.values()))}
        rho_within, per_bucket = within_group_spearman(groups)
        if per_bucket:  # each bucket's own value: a handful of buckets carries no t interval
            out["spearman_score_top1_within_buckets"] = rho_within
            out["spearman_buckets"] = len(per_bucket)
            out["spearman_per_bucket"] = [{"bucket": b, "configurations": n, "rho": rho} for b, n, rho in per_bucket]
    return out


def against_random(method: dict, good: int, population: int) -> dict:
    """The exact chance that a random set of the method's size, drawn from the evaluated
    configurations, holds at least as many good ones (`random_sets_at_least_as_good`), and whether
    that is below 5%: "beats random" is said of a single method only then."""
    p = random_sets_at_least_as_good(method["good_found"], method["picks"], good, population)
    return {"random_sets_at_least_as_good": p, "beats_random": p is not None and p < 0.05}


def recovery_report(results: dict[tuple[int, int], dict], methods: dict[str, dict], settings: RecoverySettings,
                    lo: float, hi: float, bucket_count: int, anchors: dict[str, dict] | None = None) -> dict:
    """The whole report: ground truth, good set, and every method's scores.

    methods: name -> {"picks": [(i, j)], "scores": {(i, j): score} or None}; the name RANDOM maps to
    {"draws": [[(i, j)], ...]} (one pick list per seed), reported as mean and 95% interval.
    anchors: the pair's two anchors on the same test images, name -> {"flops", "top1", ...}, cheaper
    first; with them the report also holds the accuracy-FLOPs frontier (`frontier_of`) and each
    method's `frontier_scores`.
    """
    acc = {c: r["top1"] for c, r in results.items()}
    acc_init = {c: r["top1_init"] for c, r in results.items()}
    flops = {c: r["flops"] for c, r in results.items()}
    bucket = buckets_of(flops, lo, hi, bucket_count)
    good = good_set(acc, bucket, settings.delta)
    frontier = frontier_of(acc, flops, list(anchors.values())) if anchors else None
    cheaper = min(anchors.values(), key=lambda x: x["flops"])["top1"] if anchors else None

    def scored_picks(picks, scores=None) -> dict:
        out = score_method(picks, acc, bucket, good, scores)
        if anchors:
            out.update(frontier_scores(picks, acc, frontier, cheaper))
        return out

    scored = {}
    for name, m in methods.items():
        if name == RANDOM:
            draws = [scored_picks(d) for d in m["draws"]]
            keys = ["precision", "recall", "mean_points_lost_per_pick", "mean_points_lost_per_covered_bucket", "picks"]
            keys += ["frontier_found", "frontier_recall", "above_cheaper_anchor"] if anchors else []
            scored[name] = {k: mean_interval([d[k] for d in draws]) for k in keys}
            scored[name]["seeds"] = len(draws)
        else:
            scored[name] = scored_picks(m["picks"], m.get("scores"))
            scored[name].update(against_random(scored[name], len(good), len(acc)))
            if anchors:  # the same exact share, for the frontier's configurations
                scored[name]["random_sets_at_least_as_much_frontier"] = random_sets_at_least_as_good(
                    scored[name]["frontier_found"], scored[name]["picks"], len(frontier), len(acc))
            scored[name]["picked"] = sorted([list(c) for c in dict.fromkeys(m["picks"])])
    good_init = good_set(acc_init, bucket, settings.delta)
    extra = {"anchors": anchors, "frontier": sorted([list(c) for c in frontier])} if anchors else {}
    return {**extra, 
        "format": "klas-recovery", "version": 1, "settings": asdict(settings), "flops_unit": FLOPS_UNIT,
        "flops_range": [lo, hi],
        "buckets": bucket_count,
        "configurations": [{**{k: v for k, v in results[c].items() if k != "inputs"}, "bucket": bucket[c],
                            "good": c in good} for c in sorted(results, key=lambda c: (results[c]["flops"], c))],
        "good_set": sorted([list(c) for c in good]), "good_set_after_lstsq_only": sorted([list(c) for c in good_init]),
        "methods": scored,
    }


def _budget_at_snnet_size(out: dict, scores, source: str, target: str, evaluated, options) -> None:
    """With both klas-budget and snnet-nearest in `out`: klas-budget's rules again with room for as
    many stitches as SN-Net's rules picked, as `klas-budget@N` (its rules may still take fewer)."""
    from klas.selection.budget import METHOD as BUDGET
    from klas.selection.methods import get_method

    if BUDGET not in out or SNNET not in out:
        return
    n = len([c for c in out[SNNET]["picks"] if c in set(evaluated)])
    if n == 0:
        return
    sized = dataclasses.replace(options, total_steps=(n + 2) * options.budget_min_route_steps)  # room n, two anchors
    out[f"{BUDGET}@{n}"] = get_method(BUDGET).pair(scores, source, target, sized)


def method_picks(scores, source: str, target: str, methods: Sequence[str], *, evaluated: Sequence[tuple[int, int]],
                 options, random_seeds: int = 20) -> dict:
    """Each method's picks on the pair (source, target), in the form `recovery_report` takes.

    Each method's one-pair form (klas.selection.methods.Method.pair) with `options`
    (klas.selection.methods.SelectOptions, whose cache the metric methods read): KLAS and the metric
    baselines run KLAS's bucketing, τ and coverage on this pair alone with their own score and report
    it per configuration; snnet-nearest picks SN-Net's fixed configurations. Random draws, per seed,
    as many evaluated configurations as KLAS picked. With klas-budget and snnet-nearest both run,
    `klas-budget@N` is klas-budget with room for SN-Net's N picks.
    """
    from klas.selection.methods import get_method, recovery_method_names

    out: dict[str, dict] = {}
    for m in methods:
        method = get_method(m)
        if method.pair is not None:
            out[m] = method.pair(scores, source, target, options)
        elif not method.drawn_in_recovery:
            raise UsageError(f"recovery: method {m!r} has no one-pair form (have {', '.join(recovery_method_names())})")
    _budget_at_snnet_size(out, scores, source, target, evaluated, options)
    if RANDOM in methods:
        size = len([c for c in out.get("klas", {"picks": evaluated[:1]})["picks"] if c in set(evaluated)]) or 1
        draws = []
        for seed in range(random_seeds):
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(evaluated), generator=gen)[:size].tolist()
            draws.append([tuple(evaluated[k]) for k in idx])
        out[RANDOM] = {"draws": draws}
    return out
