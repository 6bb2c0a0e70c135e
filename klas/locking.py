"""One writer per output folder: an exclusive `flock` held for the life of the work.

    with hold_lock(out / ".klas-run.lock", what=f"run folder {out}", fix="..."):
        ...  # a second process asking for the same lock gets one KlasError line naming the first

The lock file records its holder (process id, host, start time), so the refusal can name it. The
kernel drops a `flock` when its process ends, however it ends, so a killed run never leaves a
stale lock. Within one process the lock is re-entrant (a demo that calls `run` holds it once).

File systems without locks (NFS without lockd, Lustre without `-o flock`) answer ENOLCK or
EOPNOTSUPP: that is one line saying so, with the way out (`KLAS_NO_LOCKS=1` for a folder that
the user promises only one process writes).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from klas.errors import KlasError

__all__ = ["hold_lock", "acquire", "release", "flock_or_busy", "LockBusy", "locks_disabled", "lock_unsupported", "UNSUPPORTED",
           "NO_LOCKS_ENV"]

NO_LOCKS_ENV = "KLAS_NO_LOCKS"
_held: dict[str, list] = {}  # path -> [fd, depth]: locks this process holds


class LockBusy(KlasError):
    """Another process holds the lock."""


def locks_disabled() -> bool:
    """True when the user has switched locking off (`KLAS_NO_LOCKS=1`)."""
    return os.environ.get(NO_LOCKS_ENV, "") not in ("", "0")


def _holder(path: Path) -> str:
    """The holder a lock file names, as words ("" when it names none readably)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(4096).decode("utf-8"))
        return (f" (process {int(doc['pid'])} on {str(doc['host'])[:64]}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(doc['since'])))})")
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return ""


# what flock answers on a file system that has no locks
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def lock_unsupported(path: str | os.PathLike, e: OSError) -> KlasError:
    """The one-line error for a file system without locks."""
    return KlasError(f"cannot lock {path}: the file system does not support locks ({e.strerror}); run on a local disk, "
                     f"or set {NO_LOCKS_ENV}=1 if you make sure that only one klas process writes this folder")


def flock_or_busy(fd: int, path: str | os.PathLike) -> bool:
    """An exclusive `flock` on the open descriptor `fd` (of `path`), without waiting: True when taken,
    False when another process holds it, `lock_unsupported`'s one line where the file system has no
    locks. `fd` is closed unless the lock was taken. The one locking step of `acquire` and of the
    cache writer's folder lock."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError as e:
        os.close(fd)
        if e.errno in UNSUPPORTED:
            raise lock_unsupported(path, e) from None
        raise


def acquire(path: str | os.PathLike, *, what: str, fix: str) -> str | None:
    """Takes the lock at `path` (created if needed); LockBusy naming the holder when another process
    has it. Returns the key to `release` (None when locking is switched off)."""
    if locks_disabled():
        return None
    from klas.reading import resolved

    path = Path(path)
    key = str(resolved(path.parent) / path.name)
    if key in _held:
        _held[key][1] += 1
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    if not flock_or_busy(fd, path):
        raise LockBusy(f"{what} is in use by another klas process{_holder(path)}; {fix}")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    _held[key] = [fd, 1]
    return key


def release(key: str | None) -> None:
    """Gives up one hold of a lock taken by `acquire`; the last one unlocks it."""
    if key is None or key not in _held:
        return
    _held[key][1] -= 1
    if _held[key][1] == 0:
        os.close(_held.pop(key)[0])  # closing the descriptor drops the flock


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, *, what: str, fix: str, enabled: bool = True) -> Iterator[None]:
    """`acquire` for the block's duration (nothing when not `enabled`, e.g. on ranks other than 0)."""
    key = acquire(path, what=what, fix=fix) if enabled else None
    try:
        yield
    finally:
        release(key)
