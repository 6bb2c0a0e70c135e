"""The stitched supernet: the anchors plus one stitching layer per selected configuration.

A *route* is one network the supernet can run: an anchor alone, or a stitch (f, i) -> (g, j) that
runs f's stem and blocks 1..i, the stitching layer, then g's blocks j+1..m and head (KLAS
notation; SN-Net's j = 0 and i = m_f are routes too). Routes are numbered: the anchors first, in
FLOPs order, then the stitches in the order given.

`route_parts(k)` is the one block walk: `forward(x, k)` runs it and `route_params(k)` adds up its
parts' parameters. `route_flops(k)` is klas.stitches.stitched_flops, the one FLOPs sum that selection
uses too (the source's front, the stitching layer, the target's back); the tests hold it against
FlopCounterMode on the route's forward.

Stitching layers join two activations on the same spatial grid, whatever their layouts: a 1x1
convolution between feature maps (``[B, C, H, W]``), a Linear between the same token or
channels-last layout (``[B, L, C]`` / ``[B, H, W, C]``, class tokens mapped with the rest), and a
`LayoutStitch` (a Linear that converts the layout around its map) where the two sides differ:
a ResNet's feature map into a Swin's channels-last map or a ViT's tokens, and back. Every layer is
initialised by least squares (klas.stitches.fit_linear) on a calibration batch, on the device of
the features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from klas.anchors import Anchor
from klas.errors import UsageError
from klas.stitches import Route, fit_linear, route_index_problem, stitch_flops, stitched_flops

__all__ = ["Route", "Part", "StitchedSupernet", "stitching_layer", "LayoutStitch", "to_tokens", "from_tokens"]


@dataclass(frozen=True)
class Part:
    """One step of a route: ("stem", anchor), ("block", anchor, k) 1-indexed, ("stitch", k), ("head", anchor)."""

    kind: str
    owner: str | int
    index: int = 0


def to_tokens(h: torch.Tensor, layout: str) -> torch.Tensor:
    """Any layout's activation as tokens ``[B, positions, C]``, positions row-major over the grid
    (a "nlc" activation is already so, its prefix tokens first)."""
    if layout == "nchw":
        return h.flatten(2).transpose(1, 2)
    if layout == "nhwc":
        return h.flatten(1, 2)
    return h


def from_tokens(t: torch.Tensor, layout: str, grid: Sequence[int]) -> torch.Tensor:
    """The inverse of `to_tokens`: tokens ``[B, positions, C]`` laid out as `layout` on `grid`."""
    if layout == "nchw":
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid)
    if layout == "nhwc":
        return t.reshape(t.shape[0], *grid, t.shape[-1])
    return t


class LayoutStitch(nn.Linear):
    """A stitching layer between two layouts: the source's activation as tokens (its prefix tokens
    dropped unless the target has as many), one Linear over the channels, the target's prefix
    tokens prepended as learned vectors where they were not mapped, then the target's layout.

    ``[B, C_in, H, W]`` / ``[B, H, W, C_in]`` / ``[B, P_in + H·W, C_in]`` ->
    the same grid in the target's layout with C_out channels (``[B, P_out + H·W, C_out]`` for tokens).
    """

    def __init__(self, width_in: int, width_out: int, *, layout_in: str, layout_out: str, grid: Sequence[int],
                 prefix_in: int = 0, prefix_out: int = 0):
        super().__init__(width_in, width_out)
        self.layout_in, self.layout_out, self.grid = layout_in, layout_out, tuple(grid)
        self.prefix_in, self.prefix_out = prefix_in, prefix_out
        self.maps_prefix = prefix_in == prefix_out
        if prefix_out and not self.maps_prefix:
            self.prefix = nn.Parameter(torch.zeros(prefix_out, width_out))  # set by least squares: the target's mean
        else:
            self.register_parameter("prefix", None)

    def source_rows(self, h: torch.Tensor) -> torch.Tensor:
        """The tokens the map reads ``[B, positions, C_in]``."""
        t = to_tokens(h, self.layout_in)
        return t if self.maps_prefix else t[:, self.prefix_in:]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = super().forward(self.source_rows(h))
        if self.prefix is not None:
            t = torch.cat([self.prefix.to(t.dtype).expand(t.shape[0], -1, -1), t], dim=1)
        return from_tokens(t, self.layout_out, self.grid)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, {self.layout_in} -> {self.layout_out} on {self.grid}, "
                f"prefix tokens {self.prefix_in} -> {self.prefix_out}")


def stitching_layer(width_in: int, width_out: int, *, layout_in: str, layout_out: str, grid: Sequence[int],
                    prefix_in: int = 0, prefix_out: int = 0) -> nn.Module:
    """A 1x1 conv between feature maps, a Linear between the same token or channels-last layout
    (prefix tokens included), a `LayoutStitch` wherever the two sides differ."""
    if layout_in == layout_out == "nchw":
        return nn.Conv2d(width_in, width_out, kernel_size=1)
    if layout_in == layout_out and prefix_in == prefix_out:
        return nn.Linear(width_in, width_out)
    return LayoutStitch(width_in, width_out, layout_in=layout_in, layout_out=layout_out, grid=grid,
                        prefix_in=prefix_in, prefix_out=prefix_out)


class StitchedSupernet(nn.Module):
    """Anchors ``{name: Anchor}`` and routes; ``forward(x, k)`` runs route k on images ``[B, C, H, W]``."""

    def __init__(self, anchors: Sequence[Anchor], stitches: Iterable):
        """anchors: the supernet's anchors (any order: routes number them cheapest first);
        stitches: klas.stitches.Route objects, or anything `Route.of` takes (selected
        configurations, (source, target, i, j) tuples)."""
        super().__init__()
        ordered = sorted(anchors, key=lambda a: a.flops.total)
        self.anchor_names = [a.name for a in ordered]
        if len(set(self.anchor_names)) != len(ordered):
            raise UsageError(f"anchor names must differ, got {self.anchor_names}")
        self.anchors = nn.ModuleDict({_key(a.name): a for a in ordered})
        self.routes: list[Route] = [Route(a.name, a.name, a.depth, a.depth) for a in ordered]
        layers = []
        for route in map(Route.of, stitches):
            source, target, i, j = route.source, route.target, route.i, route.j
            f, g = self.anchor(source), self.anchor(target)
            problem = "it joins an anchor to itself" if source == target else route_index_problem(i, j, f.depth, g.depth)
            if problem:
                raise UsageError(f"stitch ({source}, {i}) -> ({target}, {j}): {problem}")
            (w_in, grid_in, layout_in), (w_out, grid_out, layout_out) = _cut_shape(f, i), _cut_shape(g, j)
            if grid_in != grid_out:
                raise UsageError(f"stitch ({source}, {i}) -> ({target}, {j}) joins grids {grid_in} and {grid_out}")
            self.routes.append(route)
            with torch.random.fork_rng(devices=[]):  # the same stitches give the same initial layers
                torch.manual_seed(len(layers))
                layers.append(stitching_layer(w_in, w_out, layout_in=layout_in, layout_out=layout_out, grid=grid_in,
                                              prefix_in=f.prefix_tokens, prefix_out=g.prefix_tokens))
        self.stitches = nn.ModuleList(layers)
        self.eval()  # finetuning switches to training mode itself

    # -- lookup ---------------------------------------------------------------------------------
    def anchor(self, name: str) -> Anchor:
        key = _key(name)
        if key not in self.anchors:
            raise KeyError(f"no anchor {name!r} in the supernet (have {self.anchor_names})")
        return self.anchors[key]

    def __len__(self) -> int:
        return len(self.routes)

    # -- the block walk ---------------------------------------------------------------------------
    def route_parts(self, k: int) -> list[Part]:
        r = self.routes[k]
        parts = [Part("stem", r.source)] + [Part("block", r.source, b) for b in range(1, r.i + 1)]
        if not r.is_anchor:
            parts.append(Part("stitch", k - len(self.anchor_names)))
        parts += [Part("block", r.target, b) for b in range(r.j + 1, self.anchor(r.target).depth + 1)]
        return parts + [Part("head", r.target)]

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits ``[B, classes]`` of route k."""
        return self._run(self.route_parts(k), x)

    def forward_many(self, x: torch.Tensor, ks: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """Logits of several routes (default: all) on one batch. Routes with the same source share
        its stem and blocks: each source anchor's front runs once, and every route branches off it
        after its block i (the same walk as `forward`, split after the source's blocks)."""
        ks = range(len(self.routes)) if ks is None else ks
        out: dict[int, torch.Tensor] = {}
        by_source: dict[str, list[int]] = {}
        for k in ks:
            by_source.setdefault(self.routes[k].source, []).append(k)
        for source, group in by_source.items():
            group.sort(key=lambda k: self.routes[k].i)
            h, done = x, []  # done: the parts of the shared front already run
            for k in group:
                parts = self.route_parts(k)
                cut = 1 + self.routes[k].i  # stem + blocks 1..i
                h = self._run(parts[len(done):cut], h)
                done = parts[:cut]
                out[k] = self._run(parts[cut:], h)
        return out

    def _run(self, parts: Sequence[Part], h: torch.Tensor) -> torch.Tensor:
        for p in parts:
            if p.kind == "stitch":
                h = self.stitches[p.owner](h)
                continue
            a = self.anchor(p.owner)
            h = a.stem(h) if p.kind == "stem" else a.run_head(h) if p.kind == "head" else a.blocks[p.index - 1](h)
        return h

    def route_flops(self, k: int) -> int:
        """FLOPs of one image through route k: the anchors' measured parts plus the stitching layer."""
        r = self.routes[k]
        if r.is_anchor:
            return int(self.anchor(r.source).flops.total)
        f, g = self.anchor(r.source), self.anchor(r.target)
        (w_in, grid, _), (w_out, _, _) = _cut_shape(f, r.i), _cut_shape(g, r.j)
        stitch = stitch_flops(w_in, w_out, grid, f.prefix_tokens, g.prefix_tokens)
        return stitched_flops(f.flops, r.i, stitch, g.flops, r.j)

    def route_params(self, k: int) -> int:
        total = 0
        for p in self.route_parts(k):
            if p.kind == "stitch":
                total += sum(t.numel() for t in self.stitches[p.owner].parameters())
            else:
                c = self.anchor(p.owner).params
                total += c.stem if p.kind == "stem" else c.head if p.kind == "head" else c.blocks[p.index - 1]
        return int(total)

    # -- least-squares initialisation ----------------------------------------------------------
    @torch.no_grad()
    def init_stitches(self, images: torch.Tensor, *, max_rows: int = 200_000, seed: int = 0) -> None:
        """Least-squares fit of every stitching layer on a calibration batch ``[B, C, H, W]``: f's
        activations after block i onto g's after block j (j = 0: g's stem output), over every
        position the layer maps (at most `max_rows`, a seeded draw, the same on both sides). Prefix
        tokens the layer does not map start as the target's mean over the batch. One forward per anchor."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            needed: dict[str, set[int]] = {}
            for r in self.routes[len(self.anchor_names):]:
                needed.setdefault(r.source, set()).add(r.i)
                needed.setdefault(r.target, set()).add(r.j)
            tokens: dict[tuple[str, int], torch.Tensor] = {}  # (anchor, cut) -> [B, positions, C]
            for name, ks in needed.items():
                a = self.anchor(name)
                h = a.stem(images)
                for k in range(0, max(ks) + 1):
                    if k > 0:
                        h = a.blocks[k - 1](h)
                    if k in ks:
                        tokens[(name, k)] = to_tokens(h, _cut_layout(a, k))
            drawn: dict[int, torch.Tensor | None] = {}  # row count -> the rows kept

            def rows(name: str, k: int, skip: int) -> torch.Tensor:
                """Positions after the first `skip` tokens of every image, as rows [n, C] (a seeded draw of them)."""
                flat = tokens[(name, k)][:, skip:].reshape(-1, tokens[(name, k)].shape[-1])
                n = flat.shape[0]
                if n not in drawn:
                    gen = torch.Generator().manual_seed(seed + n)
                    drawn[n] = torch.randperm(n, generator=gen)[:max_rows].to(flat.device) if n > max_rows else None
                return flat if drawn[n] is None else flat[drawn[n]]

            for s, r in enumerate(self.routes[len(self.anchor_names):]):
                layer = self.stitches[s]
                # a LayoutStitch that drops the source's prefix tokens and learns the target's fits the grid alone
                dropped = isinstance(layer, LayoutStitch) and not layer.maps_prefix
                skip_in, skip_out = (layer.prefix_in, layer.prefix_out) if dropped else (0, 0)
                weight, bias = fit_linear(rows(r.source, r.i, skip_in), rows(r.target, r.j, skip_out))
                layer.weight.copy_(weight.view_as(layer.weight))
                layer.bias.copy_(bias)
                if dropped and layer.prefix is not None:
                    layer.prefix.copy_(tokens[(r.target, r.j)][:, :skip_out].mean(dim=0))
        finally:
            for m, training in modes:  # each module back to its own mode
                m.training = training


def _key(name: str) -> str:
    return name.replace(".", "_")


def _cut_shape(a: Anchor, k: int) -> tuple[int, tuple[int, ...], str]:
    """(width, grid, layout) of the activation after block k (k = 0: the stem's output)."""
    b = a.block_info[k - 1] if k >= 1 else a.stem_info
    return b.width, tuple(b.grid), b.layout


def _cut_layout(a: Anchor, k: int) -> str:
    """Layout of the activation after block k (k = 0: the stem's output, laid out as block 1's)."""
    return a.layouts[max(k, 1) - 1]

