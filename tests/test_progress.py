"""Progress bars in a log file: one line per interval, not one per step or per postfix change."""
import io
import sys

from klas.progress import progress_bar


class _NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_postfix_changes_do_not_redraw_a_bar_written_to_a_file(monkeypatch):
    log = _NotATerminal()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(range(500), desc="finetune", unit="step")
    for step in bar:
        bar.set_postfix(loss=f"{step / 7:.3f}", route=step % 5)
        bar.set_description(f"finetune {step % 3}")
    lines = log.getvalue().splitlines()
    # the first draw and the closing one; the 30 s interval is never reached here
    assert 1 <= len(lines) <= 3, lines
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("finetune") and "500/500" in lines[-1]


def test_a_terminal_keeps_tqdm_unchanged(monkeypatch):
    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress_bar(range(3))
    assert type(bar).__name__ != "_LineBar"  # redraws in place, as tqdm does on a terminal
    bar.close()
