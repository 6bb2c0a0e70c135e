"""Turns one benchmark run's JSON into the Markdown tables of bench/RESULTS.md.

    pytest bench/ --benchmark-json=/tmp/run.json
    python bench/report.py /tmp/run.json [--title TEXT] [--append bench/RESULTS.md]

One table per group: each peer's best and median seconds, its speed relative to the group's
baseline (baseline best / peer best: above 1 is faster), its rate where the benchmark recorded the
work done, the fraction of a recorded lower bound (`floor_s`) it reaches, and the other figures
the benchmark recorded (errors, sizes). The header names the date, the commit and the machine. It
prints to stdout; `--append` also appends to a file (nothing is written anywhere else).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RESERVED = {"peer", "baseline", "work", "work_unit", "floor_s"}


class ReportError(ValueError):
    pass


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ReportError(f"{what} is {value!r}, not a number")
    return float(value)


def load_run(path: Path) -> dict:
    """The run's JSON, with the fields the report reads checked."""
    try:
        run = json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
        raise ReportError(f"{path}: no 'benchmarks' list; write one with pytest bench/ --benchmark-json={path}")
    for b in run["benchmarks"]:
        if not isinstance(b, dict) or not isinstance(b.get("stats"), dict) or not isinstance(b.get("name"), str):
            raise ReportError(f"{path}: a benchmark entry without a name or stats")
        for key in ("min", "median"):
            if _number(b["stats"].get(key), f"{b['name']}: stats.{key}") <= 0:
                raise ReportError(f"{b['name']}: stats.{key} is not positive")
        if not isinstance(b.get("extra_info", {}), dict):
            raise ReportError(f"{b['name']}: extra_info is not an object")
    return run


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4g}"
    return str(value)


def header(run: dict) -> str:
    machine = run.get("machine_info", {}) if isinstance(run.get("machine_info"), dict) else {}
    klas = machine.get("klas", {}) if isinstance(machine.get("klas"), dict) else {}
    commit = run.get("commit_info", {}) if isinstance(run.get("commit_info"), dict) else {}
    sha = str(commit.get("id", "unknown"))[:7]
    if commit.get("dirty"):
        sha += " with uncommitted changes"
    parts = [str(run.get("datetime", "unknown date"))[:16].replace("T", " ") + " UTC", f"commit {sha}",
             str(klas.get("cpu", machine.get("cpu", {}).get("brand_raw", "unknown CPU")
                               if isinstance(machine.get("cpu"), dict) else "unknown CPU")),
             f"{klas.get('cores', '?')} cores", f"{klas.get('torch_threads', '?')} torch threads",
             f"Python {machine.get('python_version', '?')}", f"torch {klas.get('torch', '?')}"]
    if klas.get("gpu"):
        parts.append(f"GPU {klas['gpu']}")
    if klas.get("scale", "full") != "full":
        parts.append(f"scale {klas['scale']} (not for quoting)")
    return ", ".join(parts)


def group_table(group: str, entries: list[dict]) -> list[str]:
    baseline_name = next((e["extra_info"].get("baseline") for e in entries if e["extra_info"].get("baseline")), None)
    baseline = next((e for e in entries if e["extra_info"].get("peer", e["name"]) == baseline_name), None)
    extras = [k for k in dict.fromkeys(k for e in entries for k in e["extra_info"]) if k not in RESERVED]
    units = sorted({str(e["extra_info"]["work_unit"]) for e in entries if "work" in e["extra_info"]})
    has_floor = any("floor_s" in e["extra_info"] for e in entries)
    cols = ["peer", "best s", "median s", "rounds", f"vs {baseline_name or 'baseline'}"]
    cols += [f"{u}/s" for u in units] + (["of floor"] if has_floor else []) + extras
    lines = [f"### {group}", "", "| " + " | ".join(cols) + " |",
             "|---|" + "---:|" * (len(cols) - 1)]
    for e in entries:
        info, best = e["extra_info"], e["stats"]["min"]
        row = [str(info.get("peer", e["name"])), f"{best:.4g}", f"{e['stats']['median']:.4g}",
               str(e["stats"].get("rounds", "?")),
               f"{baseline['stats']['min'] / best:.2f}x" if baseline else "-"]
        for unit in units:
            row.append(f"{_number(info['work'], e['name'] + ': work') / best:.4g}"
                       if str(info.get("work_unit")) == unit and "work" in info else "-")
        if has_floor:
            row.append(f"{_number(info['floor_s'], e['name'] + ': floor_s') / best:.1%}" if "floor_s" in info else "-")
        row += [_fmt(info[k]) if k in info else "-" for k in extras]
        lines.append("| " + " | ".join(row) + " |")
    if baseline_name and not baseline:
        lines += ["", f"(baseline '{baseline_name}' was not in this run: no ratios)"]
    return lines + [""]


def render(run: dict, title: str | None = None) -> str:
    groups: dict[str, list[dict]] = {}
    for b in run["benchmarks"]:
        b.setdefault("extra_info", {})
        groups.setdefault(str(b.get("group") or b["name"]), []).append(b)
    lines = [f"## {title or ', '.join(groups)}", "", header(run), ""]
    for group, entries in groups.items():
        lines += group_table(group, entries)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a run's --benchmark-json output")
    ap.add_argument("--title", help="the section's title (default: the groups' names)")
    ap.add_argument("--append", type=Path, help="also append the section to this file (e.g. bench/RESULTS.md)")
    args = ap.parse_args(argv)
    try:
        text = render(load_run(args.json), args.title)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
