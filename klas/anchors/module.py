"""A user's own model as an anchor: `module:package.module:factory`.

Loading such a spec imports `package.module` and calls `factory`: it runs code. klas loads specs
only as the user types them (CLI, config, API), never from a file it reads back.

The factory (called with the spec's options as keyword arguments) returns either an `Anchor`, or
a dict with ``stem``, ``blocks`` (a sequence of modules), ``head`` and optionally ``layout``
(one of LAYOUTS or a list), ``input_size``, ``mean``, ``std``, ``num_classes``, ``name``,
``prefix_tokens`` (class tokens before the patch tokens of token outputs).
`ModuleAnchor.from_parts(...)` builds the same from Python directly.
"""
from __future__ import annotations

import importlib
from typing import Sequence

import torch
from torch import nn

from klas.anchors.base import Anchor
from klas.anchors.registry import anchor_kind
from klas.errors import AnchorError

__all__ = ["ModuleAnchor", "load_module"]


class ModuleAnchor(Anchor):
    """Stem, blocks and head given as modules."""

    @classmethod
    def from_parts(
        cls,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        *,
        input_size: tuple[int, int, int],
        layout: str | list[str] = "nchw",
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        num_classes: int | None = None,
        name: str = "module",
        spec: str | None = None,
        prefix_tokens: int = 0,
    ) -> "ModuleAnchor":
        model = nn.ModuleDict({"stem": stem, "blocks": nn.ModuleList(blocks), "head": head})
        anchor = cls(
            spec=spec or f"module:{name}", name=name, model=model, blocks=list(model["blocks"]),
            block_names=[f"blocks.{k}" for k in range(len(blocks))], layouts=layout,
            input_size=input_size, mean=mean, std=std, num_classes=num_classes or 0, prefix_tokens=prefix_tokens,
        )
        if num_classes is None:
            with torch.no_grad():
                anchor.num_classes = int(anchor(anchor._blank_input()).shape[-1])
        return anchor.eval()

    def run_stem(self, x):
        return self.model["stem"](x)

    def run_head(self, h):
        return self.model["head"](h)


def example_anchor(num_classes: int = 5, width: int = 8) -> dict:
    """A factory for `module:` specs to copy: three conv blocks on 16x16 images, random weights
    (`module:klas.anchors.module:example_anchor?num_classes=10`)."""
    stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
    blocks = [nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(3)]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    return {"stem": stem, "blocks": blocks, "head": head, "input_size": (3, 16, 16), "name": "example"}


def _check_options(spec: str, factory, options: dict) -> None:
    """AnchorError when the spec's options are not arguments `factory` takes (a typo in an option
    name), naming the nearest one; the factory's own errors are left to it."""
    import difflib
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check against
        return
    try:
        signature.bind(**options)
    except TypeError:
        takes = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [o for o in options if o not in takes]
        near = {o: difflib.get_close_matches(o, takes, n=1) for o in unknown}
        said = ", ".join(f"{o!r}" + (f" (did you mean {near[o][0]!r}?)" if near[o] else "") for o in unknown)
        raise AnchorError(f"anchor spec {spec!r}: {factory.__name__} takes no option {said or 'of these'}; it "
                          f"takes {', '.join(takes) or 'no options'}") from None


@anchor_kind("module", usage="module:PACKAGE.MODULE:FACTORY",
             help="imports PACKAGE.MODULE and calls FACTORY(**options): an Anchor, or a dict of stem, blocks, "
                  "head and input_size (runs code: give only specs you trust)",
             test_specs=("module:klas.anchors.module:example_anchor",))
def load_module(spec: str, args: list[str], options: dict) -> Anchor:
    if len(args) != 2 or not all(args):
        raise AnchorError(f"anchor spec {spec!r}: expected module:package.module:factory")
    mod_name, fn_name = args
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise AnchorError(f"anchor spec {spec!r}: cannot import {mod_name}.{fn_name} ({e})") from None
    _check_options(spec, factory, options)
    made = factory(**options)
    if isinstance(made, Anchor):
        made.spec = spec
        return made.eval()
    if not isinstance(made, dict) or not {"stem", "blocks", "head"} <= set(made):
        raise AnchorError(f"{mod_name}.{fn_name} must return an Anchor or a dict with stem, blocks, head")
    if "input_size" not in made:
        raise AnchorError(f"{mod_name}.{fn_name}: the dict needs input_size (C, H, W)")
    parts = dict(made)
    return ModuleAnchor.from_parts(parts.pop("stem"), parts.pop("blocks"), parts.pop("head"),
                                   name=parts.pop("name", fn_name), spec=spec, **parts)
