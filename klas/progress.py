"""Progress bars: tqdm on a terminal; a plain line every few seconds when the output is a file or
a pipe (a job's log then holds a readable line per interval, not thousands of redraws)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, **kwargs):
    """`tqdm(iterable, **kwargs)`, redrawn at most every LOG_INTERVAL_S seconds, one line each,
    when stderr is not a terminal."""
    if not kwargs.get("disable") and not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("file", _LineStream(sys.stderr))
        return _LineBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


class _LineBar(tqdm):
    """tqdm whose postfix and description changes wait for the next timed redraw (tqdm redraws on
    every `set_postfix` by default, which in a log file is one line per step)."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=False)


class _LineStream:
    """A stream that ends each redraw with a newline instead of returning the carriage."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
