"""The anchor protocol: a pretrained model seen as ``head ∘ block_m ∘ … ∘ block_1 ∘ stem``.

Everything downstream (extraction, probes, stitching, FLOPs) talks to models only through this
class. An adapter subclass says how to run the stem and the head of its model family and which
modules are the blocks; the base class derives the rest (block widths and grids, pooling, FLOPs).

Block indices are 1-indexed as in KLAS: ``forward_front(x, i)`` runs the stem and blocks 1..i,
``forward_back(h, j)`` runs blocks j+1..m and the head.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from klas.limits import FLOPS_UNIT  # noqa: F401  (re-exported: FLOPs here are multiply-accumulates)
from klas.errors import AnchorError, UsageError

__all__ = ["Anchor", "load_state_checked", "BlockInfo", "token_grid", "width_and_grid", "PartCounts", "AnchorFlops", "AnchorParams", "LAYOUTS",
           "MAX_PREFIX_TOKENS", "FLOPS_UNIT", "count_macs"]

# How a block's output tensor is laid out, and so how it is pooled and what its grid is.
LAYOUTS = ("nchw", "nhwc", "nlc")
MAX_PREFIX_TOKENS = 10_000  # class tokens an anchor may have (a ViT has 1 to a few)


def token_grid(tokens: int, input_hw: tuple[int, int]) -> tuple[int, ...]:
    """The spatial grid (h, w) of `tokens` patch tokens laid out row-major over an input of
    `input_hw` = (H, W) pixels (h / w = H / W); (tokens,) when no such grid exists."""
    height, width = input_hw
    for h in range(1, tokens + 1):
        if tokens % h == 0 and h * width == (tokens // h) * height:
            return h, tokens // h
    return (tokens,)


def width_and_grid(h: torch.Tensor, layout: str, *, prefix_tokens: int = 0,
                   input_hw: tuple[int, int] | None = None) -> tuple[int, tuple[int, ...]]:
    """Channel width and spatial grid of an activation laid out as `layout`.

    The grid is spatial whatever the layout, so that two activations on the same grid match:
    (H, W) of a feature map; for tokens ``[B, L, C]``, the (h, w) of the L − `prefix_tokens` patch
    tokens over an input of `input_hw` (class and distillation tokens excluded), or (L − prefix,)
    when they form no grid of the input's aspect.
    """
    if layout == "nchw":
        return int(h.shape[1]), tuple(int(g) for g in h.shape[2:])
    if layout == "nhwc":
        return int(h.shape[-1]), tuple(int(g) for g in h.shape[1:-1])
    patches = int(h.shape[1]) - prefix_tokens
    grid = token_grid(patches, input_hw) if input_hw is not None else (patches,)
    return int(h.shape[-1]), grid


@dataclass(frozen=True)
class BlockInfo:
    """Block `index` (1-indexed): output width (channels), spatial grid ((H, W); (tokens,) for tokens
    without one) and layout."""

    index: int
    name: str
    width: int
    grid: tuple[int, ...]
    layout: str


@dataclass(frozen=True)
class PartCounts:
    """A count per part of an anchor: its stem, each block, its head (FLOPs of one image, as
    multiply-accumulates, or parameters)."""

    stem: int
    blocks: tuple[int, ...]
    head: int

    @property
    def total(self) -> int:
        return self.stem + sum(self.blocks) + self.head

    def front(self, i: int) -> int:
        """The stem and blocks 1..i (a stitch's source side)."""
        return self.stem + sum(self.blocks[:i])

    def back(self, j: int) -> int:
        """Blocks j+1..m and the head (a stitch's target side; j = 0: every block)."""
        return sum(self.blocks[j:]) + self.head

    def to_json(self) -> dict:
        return {"stem": self.stem, "blocks": list(self.blocks), "head": self.head}

    @classmethod
    def from_json(cls, d: dict) -> "PartCounts":
        """From {"stem": int, "blocks": [int], "head": int} (checked by whoever read it)."""
        return cls(int(d["stem"]), tuple(int(b) for b in d["blocks"]), int(d["head"]))


# The one rule for block indices. Blocks are numbered 1..m (KLAS notation); a stitch (i, j) leaves
# the source after block i (1..m-1) and enters the target after block j, where j = 0 is the output
# of the stem. The anchor's output (its head's logits) is not a block: it is named LOGITS wherever
# a block number would stand (the cache's column groups, the anchor walk), never 0.
LOGITS = "logits"


def take_blocks(depth: int, indices=None, *, name: str = "the anchor") -> list[int]:
    """1-indexed block numbers from a user's indices, in the spirit of timm's `feature_take_indices`:
    None: every block 1..m; an int n: the last n blocks; a sequence: each index as given, 1..m, or
    negative from the end (-1 is block m). IndexError naming the valid range otherwise."""
    if indices is None:
        return list(range(1, depth + 1))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= depth:
            raise IndexError(f"{name} has {depth} blocks; cannot take the last {indices}")
        return list(range(depth - indices + 1, depth + 1))
    out = []
    for k in indices:
        if isinstance(k, bool) or not isinstance(k, int) or not (1 <= k <= depth or -depth <= k <= -1):
            raise IndexError(f"block {k!r} is outside {name}'s blocks 1..{depth} (or -{depth}..-1 from the end)")
        out.append(k if k > 0 else depth + 1 + k)
    return out


def stitch_sources(depth: int) -> list[int]:
    """The blocks a stitch can leave an anchor from: 1..m-1 (after block m only the head is left)."""
    return list(range(1, depth))


def count_macs(fn, *args):
    """(fn(*args), multiply-accumulates of its matrix products and convolutions), counted by
    torch.utils.flop_counter (which counts two FLOPs per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, int(counter.get_total_flops()) // 2


AnchorFlops = PartCounts  # FLOPs (multiply-accumulates, FLOPS_UNIT) of one image through each part
AnchorParams = PartCounts  # parameters of each part; stem and head: the parameters their forward uses


class Anchor(nn.Module):
    """A model of the family to stitch, cut into stem, blocks and head.

    Subclasses call ``super().__init__(...)`` and implement `run_stem` and `run_head`.

    Args:
        spec: the spec string that loads this anchor (see klas.anchors.load_anchor).
        name: short name, used for cache directories.
        model: the module that owns every parameter (the original model).
        blocks: the ordered blocks, each a module inside `model`.
        block_names: one name per block (e.g. "layer2.0", "blocks.5").
        layouts: output layout of every block, one of LAYOUTS (one string for all).
        input_size: (C, H, W) the anchor expects.
        mean, std: per-channel input normalisation on RGB in [0, 1].
        num_classes: width of the head's output.
        prefix_tokens: tokens before the patch tokens of every block's output (class, distillation
            tokens; only where every layout is "nlc"); they are not part of the spatial grid.
        class_names: the classes in head order, where the anchor knows them (checked against the
            dataset's class folders); empty when unknown.
    """

    def __init__(
        self,
        *,
        spec: str,
        name: str,
        model: nn.Module,
        blocks: list[nn.Module],
        block_names: list[str],
        layouts: str | list[str],
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        prefix_tokens: int = 0,
        class_names: tuple[str, ...] = (),
    ):
        super().__init__()
        if isinstance(layouts, str):
            layouts = [layouts] * len(blocks)
        if not blocks or len(blocks) != len(block_names) or len(blocks) != len(layouts):
            raise UsageError("an anchor needs one name and one layout per block, and at least one block")
        for layout in layouts:
            if layout not in LAYOUTS:
                raise UsageError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.spec = spec
        self.name = name
        self.model = model  # owns all parameters; the block list below only points into it
        self._blocks = list(blocks)
        self.block_names = list(block_names)
        self.layouts = list(layouts)
        self.input_size = tuple(input_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_classes = num_classes
        if (isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int)
                or not 0 <= prefix_tokens < MAX_PREFIX_TOKENS):
            raise UsageError(f"prefix_tokens must be an integer in [0, {MAX_PREFIX_TOKENS}), got {prefix_tokens!r}")
        if prefix_tokens and set(self.layouts) != {"nlc"}:
            raise UsageError(f"prefix_tokens={prefix_tokens}: only an anchor whose every block outputs tokens "
                             f"('nlc') has prefix tokens, got layouts {sorted(set(self.layouts))}")
        self.prefix_tokens = int(prefix_tokens)
        self.class_names = tuple(class_names)
        # set by `normalise_in_stem`: the normalisation `stem` applies before `run_stem`
        self.register_buffer("input_mean", None, persistent=False)
        self.register_buffer("input_std", None, persistent=False)

    def weights_digest(self) -> str:
        """A digest of every parameter and buffer (names, dtypes, shapes, bytes): caches and probes
        record it, so that a checkpoint changed behind the same spec is noticed."""
        import hashlib

        h = hashlib.sha256()
        for key, t in sorted(self.model.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:32]

    def normalise_in_stem(self) -> bool:
        """Moves this anchor's input normalisation (`mean`, `std`) into its stem: it then takes RGB in
        [0, 1] (`mean` 0, `std` 1) and normalises inside `stem`, so that one image batch can feed
        anchors trained with different normalisations. The model's weights are untouched. Returns
        whether anything moved (False when the anchor already takes [0, 1] images)."""
        channels = len(self.mean)
        if self.mean == (0.0,) * channels and self.std == (1.0,) * channels:
            return False
        device = self._blank_input().device
        self.input_mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        self.input_std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        self.mean, self.std = (0.0,) * channels, (1.0,) * channels
        return True

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` as fed (normalised with `mean`, `std`) -> input of block 1: the
        normalisation moved into the stem, if any (`normalise_in_stem`), then `run_stem`."""
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return self.run_stem(x)

    # -- what adapters provide ------------------------------------------------------------
    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]``, normalised as the model expects -> input of block 1 (callers use `stem`)."""
        raise NotImplementedError

    def run_head(self, h: torch.Tensor) -> torch.Tensor:
        """Output of the last block -> logits ``[B, num_classes]``."""
        raise NotImplementedError

    # -- the protocol -----------------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    @property
    def depth(self) -> int:
        """Number of blocks m."""
        return len(self._blocks)

    def _check_cut(self, k: int) -> None:
        if not 0 <= k <= self.depth:
            raise IndexError(f"block index {k} is outside 0..{self.depth} for anchor {self.name}")

    def forward_front(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Stem and blocks 1..i. x: images ``[B, C, H, W]``."""
        self._check_cut(i)
        h = self.stem(x)
        for block in self._blocks[:i]:
            h = block(h)
        return h

    def forward_back(self, h: torch.Tensor, j: int) -> torch.Tensor:
        """Blocks j+1..m and the head: the output of block j -> logits ``[B, num_classes]``."""
        self._check_cut(j)
        for block in self._blocks[j:]:
            h = block(h)
        return self.run_head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_back(self.forward_front(x, self.depth), self.depth)

    def block_outputs(self, x: torch.Tensor):
        """Yields ``(k, output of block k)`` for k = 1..m, then ``(LOGITS, logits)``: one forward."""
        h = self.stem(x)
        for k, block in enumerate(self._blocks, start=1):
            h = block(h)
            yield k, h
        yield LOGITS, self.run_head(h)

    def pool(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Global average over the grid of block k's output -> ``[B, width_k]``."""
        layout = self.layouts[k - 1]
        if layout == "nchw":
            return h.mean(dim=(2, 3))
        if layout == "nhwc":
            return h.mean(dim=(1, 2))
        return h.mean(dim=1)

    @cached_property
    def block_info(self) -> tuple[BlockInfo, ...]:
        """Width and grid of every block's output, from one forward of a blank image."""
        infos = []
        with torch.no_grad():
            for k, h in self.block_outputs(self._blank_input()):
                if k == LOGITS:
                    break
                layout = self.layouts[k - 1]
                width, grid = self.width_and_grid(h, layout)
                infos.append(BlockInfo(k, self.block_names[k - 1], width, grid, layout))
        return tuple(infos)

    @cached_property
    def stem_info(self) -> BlockInfo:
        """Width and grid of the stem's output (index 0), laid out as block 1's input: what a stitch
        into the target's first block (j = 0) maps to."""
        layout = self.layouts[0]
        with torch.no_grad():
            width, grid = self.width_and_grid(self.stem(self._blank_input()), layout)
        return BlockInfo(0, "stem", width, grid, layout)

    @property
    def stem_width(self) -> int | None:
        """The stem's output width where it differs from block 1's output width (timm ResNet-50: 64
        against 256), else None: the one fact a stitch at j = 0 needs beyond the blocks' widths."""
        width = self.stem_info.width
        return width if width != self.block_info[0].width else None

    def width_and_grid(self, h: torch.Tensor, layout: str) -> tuple[int, tuple[int, ...]]:
        """Width and spatial grid of one of this anchor's activations (see `width_and_grid`)."""
        return width_and_grid(h, layout, prefix_tokens=self.prefix_tokens, input_hw=tuple(self.input_size[1:]))

    @cached_property
    def flops(self) -> AnchorFlops:
        """FLOPs (multiply-accumulates) per part for one image at `input_size` (`count_macs`)."""
        with torch.no_grad():
            h, stem = count_macs(self.stem, self._blank_input())
            blocks = []
            for block in self._blocks:
                h, f = count_macs(block, h)
                blocks.append(f)
            _, head = count_macs(self.run_head, h)
        return AnchorFlops(stem=stem, blocks=tuple(blocks), head=head)

    @cached_property
    def params(self) -> AnchorParams:
        """Parameters per part. Blocks own their modules; the stem and the head are whatever
        parameters receive a gradient through `run_stem` / `run_head` (adapters need not list them)."""
        named = [p for p in self.model.parameters() if p.requires_grad]

        def used_by(fn, arg) -> int:
            with torch.inference_mode(False), torch.enable_grad():
                out = fn(arg)
                if not out.requires_grad:  # a part without parameters (e.g. a stem that only normalises)
                    return 0
                grads = torch.autograd.grad(out.float().sum(), named, allow_unused=True)
            return sum(p.numel() for p, g in zip(named, grads) if g is not None)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(False):
                x = self._blank_input()
                with torch.no_grad():
                    h = self.forward_front(x, self.depth)
            stem, head = used_by(self.stem, x), used_by(self.run_head, h.detach())
        finally:
            self.model.train(was_training)
        blocks = tuple(sum(p.numel() for p in b.parameters()) for b in self._blocks)
        return AnchorParams(stem=stem, blocks=blocks, head=head)

    def _blank_input(self) -> torch.Tensor:
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        return torch.zeros((1, *self.input_size), device=device)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, depth={self.depth}, input_size={self.input_size}"


def load_state_checked(model: nn.Module, state: dict, path, *, hint: str) -> None:
    """`model.load_state_dict(state)` after checking that `state` (read from `path`) maps names to
    tensors of the model's own keys and shapes; one AnchorError line naming what differs and `hint`
    otherwise (never the raw size-mismatch report of `load_state_dict`)."""
    bad = [repr(k)[:40] for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise AnchorError(f"checkpoint {path} is not a state dict of tensors (entries {_short(bad)} are not a name "
                          f"and a tensor); {hint}")
    expected = model.state_dict()
    # BatchNorm's step counter postdates older checkpoints and does not affect evaluation.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if wrong_shape:
            parts.append(f"keys with other shapes {_short(wrong_shape)}")
        raise AnchorError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts) + f". {hint}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into the parameter
        raise AnchorError(f"checkpoint {path} does not fit {type(model).__name__} "
                          f"({str(e).strip().splitlines()[-1][:160]}). {hint}") from None


def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', … ({len(keys)} in all)' if len(keys) > limit else ''}]"
