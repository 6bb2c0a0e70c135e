"""Whether recovery tests of one pair run with other execution settings give the same accuracies.

    python tools/recovery_runs_agree.py REFERENCE.json[#R] OTHER.json[#R] ...

Each argument is a recovery.json of `klas recovery`; `#R` reads repeat R's top-1 of a test run with
repeats (`top1_repeats`) instead of their mean. For every other run against the reference: the
configurations both hold, the mean, standard deviation and largest absolute difference of their
top-1 (points), and how many differ beyond what two single runs of different seeds differ by at
the 95% level, 1.96·√2 times the noise a test with repeats measured (`noise.sd_points` of the first
file given that has it). Same seed, settings that change only rounding: far inside that.
"""
from __future__ import annotations

import math
import statistics
import sys

from klas.errors import CacheError
from klas.reading import read_json


def read_run(spec: str) -> tuple[dict[tuple[int, int], float], float | None]:
    """({(i, j): top-1}, the measured noise sd or None) of `PATH[#R]`."""
    path, _, repeat = spec.partition("#")
    if repeat and not repeat.isdigit():
        raise CacheError(f"{spec}: a repeat is a whole number after '#', e.g. {path}#0")
    doc = read_json(path, what="recovery report", error=CacheError, fix="give a recovery.json of `klas recovery`")
    try:
        noise = (doc.get("noise") or {}).get("sd_points")
        top1 = {}
        for c in doc["configurations"]:
            key = (whole(c["i"]), whole(c["j"]))
            if repeat:
                values = c.get("top1_repeats") or []
                if int(repeat) >= len(values):
                    raise CacheError(f"{path}: configuration {key} has no repeat {repeat}")
                top1[key] = finite(values[int(repeat)])
            else:
                top1[key] = finite(c["top1"])
        return top1, None if noise is None else finite(noise)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CacheError(f"{path}: not a recovery report of `klas recovery` ({type(e).__name__}: {e})") from None


def whole(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a block index, got {value!r}")
    return value


def finite(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def difference_level(sd: float) -> float:
    """What two single runs of different seeds differ by at the 95% level, for a run-to-run sd."""
    return 1.96 * math.sqrt(2) * sd


def rows(specs: list[str]) -> list[str]:
    runs = [read_run(s) for s in specs]
    sd = next((noise for _, noise in runs if noise is not None), None)
    level = None if sd is None else difference_level(sd)
    out = [f"noise: {'not measured in these files' if sd is None else f'{sd:.3f} points per run, 95% level of a difference {level:.2f}'}"]
    reference = runs[0][0]
    for spec, (top1, _) in zip(specs[1:], runs[1:]):
        common = sorted(set(reference) & set(top1))
        if not common:
            out.append(f"{spec}: no configuration in common with {specs[0]}")
            continue
        d = [top1[c] - reference[c] for c in common]
        spread = statistics.stdev(d) if len(d) > 1 else 0.0
        beyond = "" if level is None else f", {sum(abs(x) > level for x in d)} beyond {level:.2f}"
        out.append(f"{spec} - {specs[0]}: {len(common)} configurations, mean {statistics.mean(d):+.3f}, "
                   f"sd {spread:.3f}, largest |difference| {max(map(abs, d)):.2f}{beyond}")
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    try:
        print("\n".join(rows(sys.argv[1:])))
    except CacheError as e:
        print(f"recovery_runs_agree: {e}", file=sys.stderr)
        sys.exit(1)
