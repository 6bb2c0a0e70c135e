"""Training curves: one CSV row per step beside a training's checkpoint (and TensorBoard scalars
when `tensorboard` is installed), so that a user can see whether a run converged.

    log = TrainingLog(out_dir / "training.csv", ["step", "route", "loss", "lr"], resume_from=start)
    log.row(step=12, route=3, loss=0.41, lr=1e-4)
    log.flush()            # with every checkpoint: the file holds exactly the steps the checkpoint holds
    log.close()

A resumed training keeps the rows before its checkpoint's step, one per step, and drops the ones
after it (they are trained again). Reading back: `read_curve(path)` -> {column: [values]}.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from klas.files import atomic_path

__all__ = ["TrainingLog", "read_curve", "TRAINING_CSV"]

TRAINING_CSV = "training.csv"


class TrainingLog:
    """Rows of `columns` (the first is the step) appended to `path`; TensorBoard scalars under
    `path`'s folder/tensorboard when the package is installed."""

    def __init__(self, path: str | os.PathLike, columns: list[str], *, resume_from: int = 0, enabled: bool = True):
        self.path, self.columns, self.enabled = Path(path), list(columns), enabled
        self._pending: list[dict] = []
        self._tb = None
        if not enabled:
            return
        kept: dict[int, dict] = {}
        if resume_from > 0:  # one row per step before the checkpoint's (a step logged twice keeps its last row)
            for r in _read_rows(self.path, self.columns):
                step = int(float(r[self.columns[0]]))
                if 0 <= step < resume_from:
                    kept[step] = r
        self._rewrite([kept[k] for k in sorted(kept)])
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=resume_from or None)

    def _rewrite(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def row(self, **values) -> None:
        """One step's values (buffered until `flush`)."""
        if not self.enabled:
            return
        self._pending.append(values)
        if self._tb is not None:
            step = int(values[self.columns[0]])
            for key, value in values.items():
                if key != self.columns[0] and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def flush(self) -> None:
        """Appends the buffered rows (call it with every checkpoint)."""
        if not self.enabled or not self._pending:
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerows(self._pending)
        self._pending.clear()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()


def _read_rows(path: Path, columns: list[str]) -> list[dict]:
    """The rows of an earlier log with these columns; none if it is absent, not a plain file, or of
    other columns."""
    from klas.errors import KlasError
    from klas.reading import regular_file

    try:
        regular_file(path)
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != columns:
                return []
            return [r for r in reader if _number(r.get(columns[0])) is not None]
    except (KlasError, OSError, csv.Error, UnicodeDecodeError):
        return []


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_curve(path: str | os.PathLike) -> dict[str, list[float]]:
    """A training CSV as {column: values}, cells that are not finite numbers as NaN; {} if absent
    or unreadable (a curve is a diagnostic: its absence stops nothing)."""
    from klas.errors import KlasError
    from klas.reading import regular_file

    path = Path(path)
    try:
        regular_file(path)
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            out: dict[str, list[float]] = {c: [] for c in columns}
            for k, r in enumerate(reader):
                if k >= 10_000_000:
                    break
                for c in columns:
                    value = _number(r.get(c))
                    out[c].append(math.nan if value is None else value)
            return out
    except (KlasError, OSError, csv.Error, UnicodeDecodeError, ValueError):
        return {}
