"""Reading files as untrusted input: the project's own files included.

Every reader of a file klas wrote (manifests, progress files, probes, scores, selections, stage
markers, checkpoints) and of a file a user hands over (configs, SN-Net imports) goes through these
helpers, so that a damaged, hostile or misplaced file ends in one `KlasError` line naming the file
and the fix, never a traceback, a hang, code being run, or memory blown:

- `regular_file`: the path is a regular file (a FIFO or device would block or never end), and a
  symbolic link is followed only to a file inside the folder the caller names;
- `read_json`: a size cap, no NaN/Infinity constants, bounded nesting, the expected top-level type;
- `load_safetensors`: safetensors only (no pickle), shapes and values checked by the caller;
- `load_checkpoint`: `torch.load(weights_only=True)`, never a full unpickle.

Values read are then checked against what was recorded beside them (see docs/RELIABILITY.md).
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from klas.errors import KlasError

__all__ = ["regular_file", "resolved", "read_json", "nesting_depth", "plain_text", "whole_number", "load_safetensors", "read_tensor_file_pair", "load_checkpoint", "finite_number", "MAX_JSON_BYTES",
           "MAX_JSON_DEPTH"]

MAX_JSON_BYTES = 256 * 2**20  # far above any file klas writes (a manifest of 10^6 shards is ~80 MiB)
MAX_JSON_DEPTH = 64  # klas writes at most 5 levels


def regular_file(path: str | os.PathLike, *, inside: str | os.PathLike | None = None,
                 error: type[KlasError] = KlasError, fix: str = "") -> Path:
    """`path` if it is a regular file (after links, which must stay inside `inside`); else `error`.

    Never opens the file, so a FIFO cannot block the check.
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise error(f"{path} does not exist{tail}") from None
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror}){tail}") from None
    if stat.S_ISLNK(st.st_mode):
        target = resolved(path, error=error, fix=fix)
        if inside is not None:
            root = resolved(Path(inside), error=error, fix=fix)
            if root != target.parent and root not in target.parents:
                raise error(f"{path} is a link to {target}, outside {Path(inside)}; klas reads only files inside "
                            f"the folder it wrote{tail}")
        try:
            st = os.stat(target)
        except OSError as e:
            raise error(f"{path} is a link that cannot be followed ({e.strerror}){tail}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise error(f"{path} is {kind}, not a regular file{tail}")
    return path


def resolved(path: str | os.PathLike, *, error: type[KlasError] = KlasError, fix: str = "") -> Path:
    """`path` with every link followed (`Path.resolve`); `error` for a loop of links instead of the
    RuntimeError or OSError that `resolve` raises."""
    tail = f"; {fix}" if fix else ""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise error(f"{path} is a link that cannot be followed (a loop of links: {e}){tail}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def nesting_depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping past `limit` (iterative: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: str | os.PathLike, *, what: str, fix: str, error: type[KlasError] = KlasError,
              inside: str | os.PathLike | None = None, expect: type = dict,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parses a JSON file of the `expect` type at the top; `error` "<path>: <what> ... ; <fix>" otherwise."""
    path = regular_file(path, inside=inside, error=error, fix=fix)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{size} bytes, more than any {what} ({max_bytes} at most)")
        with open(path, "rb") as f:
            text = f.read(max_bytes + 1).decode("utf-8")
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{path}: not a readable {what} (nested too deeply); {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: not a readable {what} ({e}); {fix}") from None
    if nesting_depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise error(f"{path}: not a readable {what} (nested more than {MAX_JSON_DEPTH} levels); {fix}")
    if not isinstance(data, expect):
        raise error(f"{path}: not a {what} (a JSON {type(data).__name__} where {expect.__name__} belongs); {fix}")
    return data


def load_safetensors(path: str | os.PathLike, *, what: str, fix: str, error: type[KlasError] = KlasError,
                     inside: str | os.PathLike | None = None) -> dict:
    """The tensors of a safetensors file; `error` for anything the library cannot read."""
    from safetensors.torch import load_file

    path = regular_file(path, inside=inside, error=error, fix=fix)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  safetensors raises its own and several builtin types
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {str(e)[:200]}); {fix}") from None


def read_tensor_file_pair(meta_path: Path, tensor_path: Path, *, what: str, fix: str, missing: str,
                          error: type[KlasError] = KlasError) -> tuple[dict, dict]:
    """A JSON sidecar and the safetensors file it describes, both in one folder: (fields, tensors).
    `error` with `missing` when either file is absent; each read as `read_json` / `load_safetensors`."""
    if not os.path.lexists(meta_path) or not os.path.lexists(tensor_path):
        raise error(missing)
    meta = read_json(meta_path, what=what, fix=fix, error=error, inside=meta_path.parent)
    tensors = load_safetensors(tensor_path, what=what, fix=fix, error=error, inside=tensor_path.parent)
    return meta, tensors


def load_checkpoint(path: str | os.PathLike, *, what: str, fix: str, error: type[KlasError] = KlasError,
                    inside: str | os.PathLike | None = None) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, never arbitrary
    objects; a file that needs more is refused, not unpickled."""
    import pickle

    import torch

    path = regular_file(path, inside=inside, error=error, fix=fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "allowed global" in str(e) or "safe_globals" in str(e):  # a pickle naming classes or functions
            raise error(f"{path} is not a plain {what} (it holds Python objects beyond tensors and containers), "
                        f"and klas will not unpickle it; {fix}") from None
        raise error(f"{path}: not a readable {what} (damaged or not a torch file); {fix}") from None
    except Exception as e:  # noqa: BLE001  torch raises RuntimeError, EOFError, ValueError... for damaged files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise error(f"{path}: not a readable {what} ({first}); {fix}") from None


def whole_number(value: Any, low: int = 0, high: int = 2**62) -> bool:
    """Whether `value` read from a file is an integer (not a bool, not a float) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def plain_text(value: Any, max_length: int = 4096) -> bool:
    """Whether `value` is a string klas can print and write back: printable, valid Unicode (no lone
    surrogates, which JSON's \\uXXXX escapes can carry), and of bounded length."""
    if not isinstance(value, str) or not value or len(value) > max_length or not value.isprintable():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def finite_number(value: Any, name: str, *, error: type[KlasError] = KlasError, positive: bool = False,
                  low: float | None = None, high: float | None = None) -> float:
    """`value` as a float if it is a finite real number (and positive / within [low, high])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise error(f"{name} must be a finite number, got {value!r}")
    if positive and v <= 0:
        raise error(f"{name} must be positive, got {value!r}")
    if low is not None and v < low or high is not None and v > high:
        raise error(f"{name} must lie in [{low}, {high}], got {value!r}")
    return v
