"""Anchor spec strings: one name for an anchor in the API, the CLI and configs.

``KIND:ARG[:ARG...][?key=value&key=value]``, for example::

    timm:deit_tiny_patch16_224
    timm:resnet18?pretrained=false&img_size=64
    cifar-resnet:20                      (the shared checkpoint resnet20.th)
    cifar-resnet:20:/path/resnet20.th
    module:mypkg.models:make_anchor

Options after ``?`` are passed to the adapter. An adapter that declares its options gets each value
parsed strictly as the declared type (``pretrained=flase`` and ``pretraind=false`` are errors, not
the default); other values parse as true/false, int, float or text. The option ``seed`` (default 0)
seeds any randomly initialised weights, so one spec names one model in every process
(``pretrained=false`` anchors included).

A spec names code only when the user types it: ``module:`` imports a Python module and calls a
factory in it. Specs read back from files klas wrote are compared as text and never loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from klas.anchors.base import Anchor
from klas.errors import AnchorError

__all__ = ["load_anchor", "parse_spec", "register_adapter", "anchor_kind", "check_distinct_names", "AnchorKind", "KINDS",
           "COMMON_OPTIONS"]

Loader = Callable[[str, list, dict], Anchor]
COMMON_OPTIONS = {"seed": int}
MAX_SPEC_CHARS = 4096


@dataclass(frozen=True)
class AnchorKind:
    """One kind of anchor spec.

    usage: the spec's form (``cifar-resnet:DEPTH[:CHECKPOINT]``); help: what it builds.
    options: declared option names and types, parsed strictly; open_options: undeclared options
        pass through loosely typed (for adapters that forward them, e.g. to timm.create_model).
    test_specs: specs of this kind that build here without downloads or shared files (random
        weights, small inputs): the anchor contract tests run on each.
    """
    kind: str
    loader: Loader = field(repr=False)
    usage: str = ""
    help: str = ""
    options: dict = field(default_factory=dict)
    open_options: bool = False
    test_specs: tuple[str, ...] = ()


KINDS: dict[str, AnchorKind] = {}


def register_adapter(kind: str, loader: Loader, options: dict[str, type] | None = None, *,
                     open_options: bool = False, usage: str = "", help: str = "",
                     test_specs: tuple[str, ...] = ()) -> None:
    """Makes `kind:` specs load through `loader(spec, args, options)`. `options` declares option
    names and types, parsed strictly; other names are refused unless `open_options` (an adapter
    that declares none takes any key=value, loosely typed)."""
    KINDS[kind] = AnchorKind(kind, loader, usage or f"{kind}:...", help, dict(options or {}),
                             open_options or options is None, tuple(test_specs))


def anchor_kind(kind: str, **registration):
    """Decorator form of `register_adapter` on a loader ``fn(spec, args, options) -> Anchor``."""
    def wrap(loader: Loader) -> Loader:
        register_adapter(kind, loader, **registration)
        return loader
    return wrap


_TRUE, _FALSE = ("true", "yes"), ("false", "no")


def _value(text: str):
    """A loosely typed option value: true/false, int, float, or the text itself."""
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _typed(spec: str, key: str, text: str, kind: type):
    """An option value parsed strictly as `kind`; AnchorError otherwise."""
    low = text.lower()
    if kind is bool:
        if low in _TRUE + ("1",):
            return True
        if low in _FALSE + ("0",):
            return False
    elif kind is int:
        if text.lstrip("-").isdigit() and len(text) <= 18:
            return int(text)
    elif kind is float:
        try:
            value = float(text)
            if value == value and abs(value) != float("inf"):
                return value
        except ValueError:
            pass
    elif kind is str:
        return text
    raise AnchorError(f"anchor spec {spec!r}: option {key}={text!r} is not a{'n' if kind is int else ''} "
                      f"{ {bool: 'true/false', int: 'int', float: 'finite number', str: 'text'}[kind] } value")


def parse_spec(spec: str) -> tuple[str, list[str], dict]:
    """Splits a spec into (kind, args, options)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise AnchorError(f"anchor spec {spec!r} must look like KIND:NAME (kinds: {', '.join(sorted(KINDS))})")
    if len(spec) > MAX_SPEC_CHARS:
        raise AnchorError(f"anchor spec of {len(spec)} characters; a spec is at most {MAX_SPEC_CHARS}")
    body, _, query = spec.partition("?")
    kind, *args = body.split(":")
    declared = {**(KINDS[kind].options if kind in KINDS else {}), **COMMON_OPTIONS}
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise AnchorError(f"anchor spec {spec!r}: option {item!r} is not key=value")
        if key in options:
            raise AnchorError(f"anchor spec {spec!r}: option {key!r} is given twice")
        if key in declared:
            options[key] = _typed(spec, key, val, declared[key])
        elif kind not in KINDS or KINDS[kind].open_options:
            options[key] = _value(val)
        else:
            raise AnchorError(f"anchor spec {spec!r}: unknown option {key!r} for {kind}: (known: "
                              f"{', '.join(sorted(declared))})")
    return kind, args, options


def load_anchor(spec: str) -> Anchor:
    """Builds the anchor a spec names, in eval mode on the CPU."""
    kind, args, options = parse_spec(spec)
    if kind not in KINDS:
        raise AnchorError(f"anchor spec {spec!r}: unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    # seed seeds random weights; a kind that declares it also receives it (e.g. to pick a seed's checkpoint)
    seed = options.get("seed", 0) if "seed" in KINDS[kind].options else options.pop("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise AnchorError(f"anchor spec {spec!r}: seed must be an integer in 0..2^63-1")
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return KINDS[kind].loader(spec, args, options)


def check_distinct_names(anchors) -> None:
    """AnchorError when two different specs give one anchor name: every folder and file of a run is
    keyed by the name, so their outputs would overwrite each other."""
    seen: dict[str, str] = {}
    for a in anchors:
        first = seen.setdefault(a.name, a.spec)
        if first != a.spec:
            raise AnchorError(f"anchors {first!r} and {a.spec!r} both get the name {a.name!r}, and klas keys every "
                              "output by name; run them into separate `out` folders (a seeded zoo model takes its name from the "
                              "seed option)")
        # the same spec twice is one anchor listed twice

