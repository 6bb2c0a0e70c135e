"""Compiled execution: the `compile` setting (auto | on | off).

While a stage runs, the parts of a model that do the work (every block of every anchor and every
stitching layer) can run through `torch.compile` (inductor): `compiled_parts(modules)` gives each
part a compiled forward for the length of a `with` block and leaves it eager again after it. The
parts are compiled one by one, not whole routes: routes share their blocks, so one compiled block
serves every route through it, and blocks of one class and shape share one graph.

When a part is compiled (`should_compile`):
- ``off``: never;
- ``on``: in every stage, training included;
- ``auto`` (the default): in inference (extraction, evaluation, the predictions, the recovery
  test's forward passes without gradients) when the stage pushes at least `AUTO_MIN_IMAGE_PASSES`
  images through blocks, so that the compile time can pay; training stays eager. Both rules come
  from bench/bench_compile.py on 2-core CPUs (bench/RESULTS.md): compiled inference of ResNet-56's
  blocks ran 1.32x-1.56x the eager speed and paid for its first compile (18-45 s; inductor's cache
  persists across stages and runs) after about 35,000 images; a whole evaluation stage (a
  supernet's 14 routes) ran 1.45x and paid after about 146,000 images times routes, the larger
  break-even, which the threshold covers; compiled training steps ran 0.68x-0.86x the eager
  speed, so they never pay there.

A part that cannot be compiled (an operation inductor does not take, no C compiler) runs eagerly:
one line says so, the results are the eager ones.

The mode is set for a block of code with `compile_mode("on")` (klas run sets the config's
`compile`), or per process with the environment variable KLAS_COMPILE.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterable, Iterator

from klas.modes import ProcessMode

__all__ = ["COMPILE_MODES", "AUTO_MIN_IMAGE_PASSES", "compile_mode", "current_mode", "should_compile",
           "compiled_parts", "supernet_parts"]

COMPILE_MODES = ("auto", "on", "off")
AUTO_MIN_IMAGE_PASSES = 150_000  # images x routes (or anchors) of one stage; below it a cold compile may not pay
RECOMPILE_LIMIT = 256  # graphs per forward function (one per block class, grid and batch shape)

_MODE = ProcessMode(COMPILE_MODES, what="compile mode", setting="compile", env="KLAS_COMPILE")
_failed: "weakref.WeakSet" = weakref.WeakSet()  # modules that could not be compiled: eager from then on


def current_mode() -> str:
    """The compile mode in force: the innermost `compile_mode`, else $KLAS_COMPILE, else auto."""
    return _MODE.current()


def compile_mode(mode: str):
    """Sets the compile mode (auto | on | off) inside the `with` block."""
    return _MODE.set(mode)


def should_compile(*, training: bool, image_passes: int) -> bool:
    """Whether a stage compiles its parts under the current mode. image_passes: images the stage
    runs through blocks, times the routes (or anchors) each image goes through."""
    mode = current_mode()
    if mode != "auto":
        return mode == "on"
    return not training and image_passes >= AUTO_MIN_IMAGE_PASSES


def supernet_parts(net) -> list:
    """The parts of a klas.stitching.stitch.StitchedSupernet to compile: its anchors' blocks and its stitching layers."""
    return [b for a in net.anchors.values() for b in a.blocks] + list(net.stitches)


class _CompiledForward:
    """A part's forward through torch.compile; on a compile error, that part's eager forward (said once)."""

    def __init__(self, module, log: Callable[[str], None], backend: str):
        import torch

        self.module = weakref.ref(module)
        self.eager = module.forward
        self.compiled = torch.compile(module.forward, backend=backend)
        self.log = log

    def __call__(self, *args, **kwargs):
        module = self.module()
        if module is not None and module not in _failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager forward decides
                _failed.add(module)
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self.log(f"[compile] {type(module).__name__} cannot be compiled ({type(e).__name__}: {first}); "
                         "it runs eagerly")
        return self.eager(*args, **kwargs)


@contextlib.contextmanager
def compiled_parts(modules: Iterable, enabled: bool = True, *, log: Callable[[str], None] = print,
                   backend: str = "inductor") -> Iterator[None]:
    """Inside the block, each module's forward runs compiled (when `enabled`; `backend`: torch.compile's,
    "eager" only traces, for quick checks of code around it); eager again after it.
    Compiled code is cached by torch per forward function and input shapes, so a second block over
    the same modules compiles nothing new."""
    if not enabled:
        yield
        return
    import torch._dynamo

    installed = []
    # every block of an anchor is its own module: each may need its own graph (first blocks of a stage
    # differ), more than dynamo's default of 8 per forward function
    limit = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
    limit.__enter__()
    try:
        for module in dict.fromkeys(modules):  # each once, in order
            if "forward" in vars(module):  # already compiled by an enclosing block (or patched by its owner)
                continue
            module.forward = _CompiledForward(module, log, backend)
            installed.append(module)
        yield
    finally:
        for module in installed:
            del module.forward
        limit.__exit__(None, None, None)
