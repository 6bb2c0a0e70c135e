"""Writing files so that no reader ever sees half of one, even when the disk fills.

`atomic_path(path)` hands out a temporary name beside `path` (unique to the process); when the block ends the file is
fsynced and renamed over `path`, and if anything fails (a full disk, a read-only folder, a kill
between the two) the temporary file is removed and `path` keeps its old content.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_json_atomic", "save_safetensors_atomic", "torch_save_atomic", "fsync_dir",
           "describe_write_error", "describe_path_error"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields ``path.<pid>.tmp`` to write; on success fsyncs it and renames it over `path`. The
    process id keeps two processes writing the same file from writing into one temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write() names no file: say which one
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes JSON through `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike) -> None:
    """safetensors through `atomic_path` (serialised in memory first, so that a full disk raises
    OSError rather than the library's own error type)."""
    from safetensors.torch import save

    data = save(tensors)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


class _KeepWriteError:
    """A file that remembers the OSError of a failed write (torch.save reports it as RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through `atomic_path`; a failed write raises its OSError."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = _KeepWriteError(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# errno values that mean "this output location cannot take the file"
_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                 errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is larger than allowed"}


def describe_write_error(e: OSError) -> str | None:
    """A one-line message with the fix for an OSError of writing output; None for other errors."""
    what = _WRITE_ERRORS.get(e.errno)
    if what is None:
        return None
    return (f"cannot write {e.filename or 'the output'}: {what} ({e.strerror}). Finished files and stages are intact: "
            "free space or fix the folder (or choose another output folder) and run the same command again "
            "to continue")


# errno values that mean "this path is not what the command expects there"
_PATH_ERRORS = {errno.ENOTDIR: "a file stands where a folder belongs", errno.EISDIR: "it is a folder, not a file",
                errno.EEXIST: "something is already there",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.ELOOP: "too many levels of links", errno.ENAMETOOLONG: "the name is too long"}


def describe_path_error(e: OSError) -> str | None:
    """A one-line message for an OSError caused by a path the user gave (None for other errors)."""
    what = _PATH_ERRORS.get(e.errno)
    if what is None or e.filename is None:
        return None
    return (f"cannot use {e.filename}: {what} ({e.strerror}); check the path given (a file where a folder is "
            "expected, or the reverse?)")
