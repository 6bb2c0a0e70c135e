"""Two runs' seconds per stage side by side: how much faster the second ran each stage and in all.

    python tools/timings_ratio.py BEFORE/timings.json AFTER/timings.json

Each argument is the timings.json that `klas run` and `klas recovery` write at their output's top.
Stages are matched by their folder (relative to each run's output, so two runs into other folders
compare); a stage only one of them ran is listed apart and left out of the totals. For each stage,
each stage kind and the total: seconds before, after, and before / after (above 1: faster).
"""
from __future__ import annotations

import sys

from recovery_runs_agree import finite

from klas.errors import CacheError
from klas.reading import read_json


def read_timings(path: str) -> dict[str, tuple[str, float]]:
    """{folder: (stage, seconds)} of one timings.json."""
    doc = read_json(path, what="timings", error=CacheError, fix="give the timings.json of `klas run` or `klas recovery`")
    try:
        if doc["format"] != "klas-timings":
            raise ValueError(f"format is {doc['format']!r}")
        out = {}
        for row in doc["stages"]:
            seconds = finite(row["seconds"])
            if seconds < 0:
                raise ValueError(f"seconds {seconds!r} of {row.get('folder')!r}")
            out[str(row["folder"])] = (str(row["stage"]), seconds)
        return out
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CacheError(f"{path}: not the timings of a klas run ({type(e).__name__}: {e})") from None


def ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after > 0 else "-"


def rows(before_path: str, after_path: str) -> list[str]:
    before, after = read_timings(before_path), read_timings(after_path)
    both = [f for f in before if f in after]
    width = max([len(f) for f in both] + [12])
    out = [f"{'stage':<9} {'folder':<{width}} {'before s':>9} {'after s':>9} {'speed':>7}"]
    kinds: dict[str, list[float]] = {}
    for folder in both:
        stage, b = before[folder]
        a = after[folder][1]
        kinds.setdefault(stage, [0.0, 0.0])
        kinds[stage][0] += b
        kinds[stage][1] += a
        out.append(f"{stage:<9} {folder:<{width}} {b:>9.1f} {a:>9.1f} {ratio(b, a):>7}")
    for stage, (b, a) in kinds.items():
        out.append(f"{stage:<9} {'(all)':<{width}} {b:>9.1f} {a:>9.1f} {ratio(b, a):>7}")
    total_b, total_a = sum(v[0] for v in kinds.values()), sum(v[1] for v in kinds.values())
    out.append(f"{'total':<9} {'':<{width}} {total_b:>9.1f} {total_a:>9.1f} {ratio(total_b, total_a):>7}")
    for name, own, other in (("before", before, after), ("after", after, before)):
        alone = [f for f in own if f not in other]
        if alone:
            out.append(f"only {name}: " + ", ".join(alone))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    try:
        print("\n".join(rows(sys.argv[1], sys.argv[2])))
    except CacheError as e:
        print(f"timings_ratio: {e}", file=sys.stderr)
        sys.exit(1)
