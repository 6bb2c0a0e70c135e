"""Any model as an anchor, without rewriting it: `wrap_model(model, ["layer1.0", "layer1.1", ...])`.

The model's forward is traced with torch.fx, the named blocks kept whole (leaf modules: their insides
are never traced), and the graph cut at each block's output into stem, blocks and head:

    stem    : every node before block 1, ending at block 1's input
    block k : the nodes after block k−1 up to block k's call (glue between blocks, such as a pooling
              or an activation the parent's forward applies, goes with the next block)
    head    : the nodes after block m

A cut is valid only where block k's output is the one value that later nodes use from before it
(parameters and constants aside). Where the forward passes anything else across (a skip connection
around the cut, the input image used again later), or cannot be traced (control flow on tensor
values), the wrapper refuses with one line naming the place, and the model can still be given as
stem / blocks / head (`ModuleAnchor.from_parts`, or a `module:` spec).

The pieces are torch.fx GraphModules over the model's own submodules: parameters are shared with
`model`, which owns them (its state dict keys are the anchor's, its weights digest too).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import fx, nn

from klas.anchors.base import Anchor
from klas.errors import AnchorError

__all__ = ["WrappedAnchor", "wrap_model"]


class _BlocksAsLeaves(fx.Tracer):
    """torch.fx's tracer, with the named blocks (and modules of `leaf_types`) as leaf modules:
    called, never traced into; `autowrap_functions` are recorded as calls, never traced into."""

    def __init__(self, leaves: set[str], leaf_types: tuple = (), autowrap_functions: tuple = ()):
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaves, self.leaf_types = leaves, tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaves or (bool(self.leaf_types) and isinstance(m, self.leaf_types))
                or super().is_leaf_module(m, qualname))


def _crossing(nodes: list[fx.Node], index: dict[fx.Node, int], boundary: int) -> set[fx.Node]:
    """Values defined at or before position `boundary` (`index`: each node's position) that a node
    after it uses (get_attr nodes, parameters and constants, left out: a later piece reads them again)."""
    out = set()
    for n in nodes[boundary + 1:]:
        for used in n.all_input_nodes:
            if index[used] <= boundary and used.op != "get_attr":
                out.add(used)
    return out


def _piece(root: nn.Module, nodes: list[fx.Node], lo: int, hi: int, source: fx.Node, result) -> fx.GraphModule:
    """A GraphModule of nodes[lo..hi] that takes `source`'s value as its one input and returns what
    `result` maps to (a node, or the output node's argument)."""
    graph = fx.Graph()
    env = {source: graph.placeholder("h")}

    def value(n: fx.Node):
        if n not in env:  # a get_attr from an earlier piece: read it again here
            if n.op != "get_attr":
                raise KeyError(n.name)
            env[n] = graph.node_copy(n, value)
        return env[n]

    for n in nodes[lo:hi + 1]:
        if n is source or n.op in ("placeholder", "output"):
            continue
        env[n] = graph.node_copy(n, value)
    graph.output(fx.node.map_arg(result, value))
    graph.lint()
    return fx.GraphModule(root, graph)


class WrappedAnchor(Anchor):
    """A model cut at its named blocks by `wrap_model`."""

    def __init__(self, *, stem: fx.GraphModule, pieces: list[fx.GraphModule], head: fx.GraphModule, **kwargs):
        super().__init__(blocks=pieces, **kwargs)
        self._stem, self._head = stem, head

    def run_stem(self, x):
        return self._stem(x)

    def run_head(self, h):
        return self._head(h)


def wrap_model(model: nn.Module, blocks: Sequence[str], *, input_size: tuple[int, int, int],
               layout: str | list[str] = "nchw", mean: tuple[float, ...] = (0.5, 0.5, 0.5),
               std: tuple[float, ...] = (0.5, 0.5, 0.5), num_classes: int | None = None, name: str = "wrapped",
               spec: str | None = None, prefix_tokens: int = 0, leaf_types: tuple = (),
               autowrap_functions: tuple = ()) -> WrappedAnchor:
    """`model` (any nn.Module taking images ``[B, C, H, W]`` and returning logits ``[B, classes]``) as
    an anchor cut after each of `blocks` (submodule names as in `model.named_modules()`, in forward
    order). AnchorError with one line when a name is not a submodule, the forward cannot be traced,
    or a cut would drop a value the rest of the forward needs.

    leaf_types, autowrap_functions: module classes and functions the tracer must not trace into
    (a library's own, e.g. timm's `get_notrace_modules()` / `get_notrace_functions()`)."""
    blocks = list(blocks)
    named = dict(model.named_modules())
    if not blocks:
        raise AnchorError("wrap_model needs at least one block name")
    missing = [b for b in blocks if b not in named or b == ""]
    if missing:
        import difflib

        near = difflib.get_close_matches(missing[0], list(named), n=1)
        raise AnchorError(f"{name}: {missing[0]!r} is not a submodule of the model"
                          + (f" (did you mean {near[0]!r}?)" if near else "") + "; give names from model.named_modules()")
    if len(set(blocks)) != len(blocks):
        raise AnchorError(f"{name}: a block is named twice in {blocks}")
    try:
        graph = _BlocksAsLeaves(set(blocks), leaf_types, autowrap_functions).trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; one line says which and what to do
        raise AnchorError(f"{name}: the model's forward cannot be traced to cut it at its blocks "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); give it as stem, "
                          "blocks and head instead (ModuleAnchor.from_parts)") from None
    nodes = list(graph.nodes)
    index = {n: k for k, n in enumerate(nodes)}
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise AnchorError(f"{name}: the model's forward takes {len(inputs)} inputs; an anchor takes one batch of images")
    calls = {b: [k for k, n in enumerate(nodes) if n.op == "call_module" and n.target == b] for b in blocks}
    for b, at in calls.items():
        if len(at) != 1:
            raise AnchorError(f"{name}: block {b!r} is called {len(at)} times in the forward; a block must run once")
    at = [calls[b][0] for b in blocks]
    if at != sorted(at):
        order = [b for _, b in sorted(zip(at, blocks))]
        raise AnchorError(f"{name}: the blocks run in the order {order}, not as given; list them in forward order")
    first = nodes[at[0]]
    if len(first.all_input_nodes) != 1 or first.kwargs:
        raise AnchorError(f"{name}: block {blocks[0]!r} takes {len(first.all_input_nodes)} inputs; the first block "
                          "must take one tensor")
    source = first.all_input_nodes[0]
    stem_end = index[source]
    if _crossing(nodes, index, stem_end) != {source}:
        raise AnchorError(f"{name}: the forward uses more than block {blocks[0]!r}'s input after the stem (e.g. the "
                          "input image again); it cannot be cut there")
    for k, pos in enumerate(at, start=1):
        crossing = _crossing(nodes, index, pos)
        if crossing != {nodes[pos]}:
            others = sorted(n.name for n in crossing if n is not nodes[pos])
            raise AnchorError(f"{name}: cannot cut after block {blocks[k - 1]!r}: the forward carries "
                              f"{', '.join(others)} past it besides the block's output (a skip connection around "
                              "the cut?); choose blocks whose outputs are the only values passed on")
    output = next(n for n in nodes if n.op == "output")
    stem = _piece(model, nodes, 0, stem_end, inputs[0], source)
    pieces, lo = [], stem_end + 1
    for pos in at:
        pieces.append(_piece(model, nodes, lo, pos, nodes[lo - 1], nodes[pos]))
        lo = pos + 1
    head = _piece(model, nodes, lo, len(nodes) - 1, nodes[lo - 1], output.args[0])
    anchor = WrappedAnchor(stem=stem, pieces=pieces, head=head, spec=spec or f"wrapped:{name}", name=name,
                           model=model, block_names=blocks, layouts=layout, input_size=input_size, mean=mean, std=std,
                           num_classes=num_classes or 0, prefix_tokens=prefix_tokens)
    if num_classes is None:
        with torch.no_grad():
            anchor.num_classes = int(anchor.eval()(anchor._blank_input()).shape[-1])
    return anchor.eval()
