"""Writes a small 10-class image set (coloured shapes on noise, 32x32 PNG) as a zip.

    python examples/make_shapes.py examples/shapes.zip --per-class 16

The quick start extracts from it; tests build their own copies of any size.
"""
from __future__ import annotations

import argparse
import io
import zipfile

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring", "hbar", "vbar", "diamond", "dots", "diag")


def draw(cls: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    noise = rng.integers(0, 64, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    d = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in rng.integers(128, 256, size=3))
    c = size // 2 + int(rng.integers(-3, 4))
    r = int(rng.integers(7, 12))
    box = (c - r, c - r, c + r, c + r)
    shape = CLASSES[cls]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=colour)
    elif shape == "cross":
        d.line((c - r, c - r, c + r, c + r), fill=colour, width=3)
        d.line((c - r, c + r, c + r, c - r), fill=colour, width=3)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=3)
    elif shape == "hbar":
        d.rectangle((c - r, c - 2, c + r, c + 2), fill=colour)
    elif shape == "vbar":
        d.rectangle((c - 2, c - r, c + 2, c + r), fill=colour)
    elif shape == "diamond":
        d.polygon([(c, c - r), (c - r, c), (c, c + r), (c + r, c)], fill=colour)
    elif shape == "dots":
        for dx in (-r // 2, r // 2):
            for dy in (-r // 2, r // 2):
                d.ellipse((c + dx - 2, c + dy - 2, c + dx + 2, c + dy + 2), fill=colour)
    else:
        d.line((c - r, c - r, c + r, c + r), fill=colour, width=4)
    return img


def write_shapes(path, per_class: int, seed: int = 0, fmt: str = "PNG") -> None:
    """Writes `per_class` images of each class: a zip if `path` ends in .zip, else folders."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    path = Path(path)
    out = zipfile.ZipFile(path, "w") if path.suffix == ".zip" else None
    ext = "png" if fmt == "PNG" else "jpg"
    for cls, name in enumerate(CLASSES):
        for k in range(per_class):
            buf = io.BytesIO()
            draw(cls, rng).save(buf, format=fmt)
            rel = f"{name}/{k:04d}.{ext}"
            if out is not None:
                out.writestr(rel, buf.getvalue())
            else:
                (path / name).mkdir(parents=True, exist_ok=True)
                (path / rel).write_bytes(buf.getvalue())
    if out is not None:
        out.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_shapes(a.path, a.per_class, a.seed)
