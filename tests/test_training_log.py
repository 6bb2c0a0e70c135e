"""Training curves beside checkpoints: written with each checkpoint, trimmed on resume, read back."""
from __future__ import annotations

import math

from klas.training_log import TrainingLog, read_curve


def test_rows_reach_the_file_at_flush_and_a_resume_drops_the_steps_after_its_checkpoint(tmp_path):
    path = tmp_path / "training.csv"
    log = TrainingLog(path, ["step", "route", "loss", "lr"])
    for step in range(10):
        log.row(step=step, route=f"r{step % 3}", loss=1.0 / (step + 1), lr=0.1)
        if step == 5:
            log.flush()  # a checkpoint at step 6
    assert read_curve(path)["step"] == [0, 1, 2, 3, 4, 5]  # the rest is not yet flushed: lost with a crash
    again = TrainingLog(path, ["step", "route", "loss", "lr"], resume_from=4)  # a checkpoint of step 4
    again.row(step=4, route="r1", loss=0.5, lr=0.05)
    again.close()
    curve = read_curve(path)
    assert curve["step"] == [0, 1, 2, 3, 4] and curve["loss"][-1] == 0.5 and curve["lr"][:4] == [0.1] * 4
    assert all(math.isnan(v) for v in curve["route"])  # names are not numbers


def test_a_missing_or_damaged_curve_reads_as_empty(tmp_path):
    assert read_curve(tmp_path / "none.csv") == {}
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert read_curve(tmp_path / "bad.csv") == {}
