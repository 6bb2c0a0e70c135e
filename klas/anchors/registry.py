"""Anchor spec strings: one name for an anchor in the API, the CLI and configs.

``KIND:ARG[:ARG...][?key=value&key=value]``, for example::

    timm:deit_tiny_patch16_224
    timm:resnet18?pretrained=false&img_size=64
    cifar-resnet:20                      (the shared checkpoint resnet20.th)
    cifar-resnet:20:/path/resnet20.th
    module:mypkg.models:make_anchor

Options after ``?`` are passed to the adapter; values parse as int, float, true/false or text.
The option ``seed`` (default 0) seeds any randomly initialised weights, so one spec names one
model in every process (``pretrained=false`` anchors included).
"""
from __future__ import annotations

from typing import Callable

from klas.anchors.base import Anchor
from klas.errors import AnchorError

__all__ = ["load_anchor", "parse_spec", "register_adapter", "ADAPTERS"]

Loader = Callable[[str, list, dict], Anchor]
ADAPTERS: dict[str, Loader] = {}


def register_adapter(kind: str, loader: Loader) -> None:
    """Makes `kind:` specs load through `loader(spec, args, options)`."""
    ADAPTERS[kind] = loader


def _value(text: str):
    low = text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, list[str], dict]:
    """Splits a spec into (kind, args, options)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise AnchorError(f"anchor spec {spec!r} must look like KIND:NAME (kinds: {', '.join(sorted(ADAPTERS))})")
    body, _, query = spec.partition("?")
    kind, *args = body.split(":")
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise AnchorError(f"anchor spec {spec!r}: option {item!r} is not key=value")
        options[key] = _value(val)
    return kind, args, options


def load_anchor(spec: str) -> Anchor:
    """Builds the anchor a spec names, in eval mode on the CPU."""
    kind, args, options = parse_spec(spec)
    if kind not in ADAPTERS:
        raise AnchorError(f"anchor spec {spec!r}: unknown kind {kind!r} (known: {', '.join(sorted(ADAPTERS))})")
    seed = options.pop("seed", 0)
    if not isinstance(seed, int):
        raise AnchorError(f"anchor spec {spec!r}: seed must be an integer")
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ADAPTERS[kind](spec, args, options)
