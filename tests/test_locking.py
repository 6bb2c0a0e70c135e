"""One writer per folder (klas.locking), file systems without locks, and the training curve that a
resumed training writes (one row per step)."""
from __future__ import annotations

import errno
import fcntl
import os

import pytest

from klas.errors import KlasError
from klas.locking import LockBusy, acquire, hold_lock, release
from klas.training_log import TrainingLog, read_curve


def test_a_lock_is_reentrant_in_one_process_and_released_by_the_last_hold(tmp_path):
    path = tmp_path / "out" / ".lock"
    outer = acquire(path, what="the folder", fix="wait")
    inner = acquire(path, what="the folder", fix="wait")
    release(inner)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # still held by the outer hold
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        release(outer)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    finally:
        os.close(fd)


def test_a_busy_lock_names_its_holder(tmp_path):
    path = tmp_path / ".lock"
    path.write_text('{"pid": 4242, "host": "node7", "since": 0}')
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file description: another holder
    try:
        with pytest.raises(LockBusy, match=r"the folder is in use by another klas process \(process 4242 on node7"):
            acquire(path, what="the folder", fix="wait")
    finally:
        os.close(fd)


def _no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")


def test_a_file_system_without_locks_is_one_line_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_locks)
    with pytest.raises(KlasError, match=r"does not support locks .*KLAS_NO_LOCKS=1"):
        with hold_lock(tmp_path / ".lock", what="x", fix="y"):
            pass
    monkeypatch.setenv("KLAS_NO_LOCKS", "1")
    with hold_lock(tmp_path / ".lock", what="x", fix="y"):  # switched off: the work runs
        pass


def test_extraction_on_a_file_system_without_locks_is_one_line(tmp_path, shapes_dir, monkeypatch, capsys):
    from helpers import REAL_A

    from klas.pipeline.cli import main

    monkeypatch.setattr(fcntl, "flock", _no_locks)
    argv = ["extract", "--anchor", REAL_A, "--data", str(shapes_dir), "--out", str(tmp_path / "out"), "--splits",
            "val", "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not support locks" in err and "KLAS_NO_LOCKS" in err, err
    monkeypatch.setenv("KLAS_NO_LOCKS", "1")
    assert main(argv) == 0


def test_a_resumed_curve_holds_each_step_once(tmp_path):
    path = tmp_path / "training.csv"
    # a curve damaged by two writers: steps 0-3 twice, interleaved
    path.write_text("step,loss\n0,1.0\n0,1.5\n1,0.9\n2,0.8\n1,0.95\n3,0.7\n2,0.85\n3,0.75\n")
    log = TrainingLog(path, ["step", "loss"], resume_from=3)
    for step in (3, 4):
        log.row(step=step, loss=0.5)
    log.close()
    curve = read_curve(path)
    assert curve["step"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert curve["loss"] == [1.5, 0.95, 0.85, 0.5, 0.5]  # each step's last row before the checkpoint
