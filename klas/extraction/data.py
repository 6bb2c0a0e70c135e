"""Image datasets: a class-per-folder directory or a zip of ``<class>/<file>`` images.

A data root is either a folder holding a training and a test set (``train.zip``/``train/`` and
``test.zip``/``test/``), or one image set (a zip or a class-per-folder directory) used for every
split. Splits:

- ``train``: the probe-training part D_t of the training set,
- ``val``: the validation part D_v of the training set (a seeded, deterministic split),
- ``test``: the test set, for evaluation.

Class index = position of the class folder name in sorted order.
"""
from __future__ import annotations

import io
import lzma
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from klas.errors import DataError, UsageError
from klas.limits import MAX_DECODED_BYTES

__all__ = [
    "IMAGE_EXTENSIONS", "SPLITS", "DecodedOnce", "ImageSource", "ImageDataset", "check_classes", "make_loader", "open_images", "prefetched",
    "resolve_split", "samples_digest", "split_for_anchor", "split_indices", "take_subset",
]

MAX_IMAGE_BYTES = 64 * 2**20  # one image file (a 4K PNG is ~25 MiB)
MAX_IMAGE_PIXELS = 40_000_000  # width x height of one image, checked from its header before decoding
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSource:
    """The images of one set. files: ``<class>/<name>`` paths; labels: int64 ``[n]``."""

    path: Path
    is_zip: bool
    files: tuple[str, ...]
    classes: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def read_bytes(self, k: int, _zips: dict = {}) -> bytes:
        """The bytes of image `k`, at most MAX_IMAGE_BYTES (a larger file is refused, not read)."""
        if not self.is_zip:
            with open(self.path / self.files[k], "rb") as f:
                data = f.read(MAX_IMAGE_BYTES + 1)
        else:
            # One ZipFile per process: DataLoader workers must not share a file handle.
            key = (os.getpid(), str(self.path))
            if key not in _zips:
                _zips[key] = zipfile.ZipFile(self.path)
            with _zips[key].open(self.files[k]) as f:
                data = f.read(MAX_IMAGE_BYTES + 1)  # the declared size may lie: read no more than this
        if len(data) > MAX_IMAGE_BYTES:
            raise DataError(f"dataset {self.path}: {self.files[k]} is larger than an image may be ({MAX_IMAGE_BYTES} "
                            "bytes); remove it")
        return data


def open_images(path: str | os.PathLike) -> ImageSource:
    """Lists an image set; DataError if it is missing, empty, or holds non-image files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"dataset {path} is a file but not a zip; give a zip or a folder of class folders")
        try:
            with zipfile.ZipFile(path) as z:
                infos = [i for i in z.infolist() if not i.filename.endswith("/")]
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise DataError(f"dataset {path}: unreadable zip ({e})") from None
        for info in infos:
            _check_zip_member(path, info)
        names = [i.filename for i in infos]
        is_zip = True
    else:
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        is_zip = False
    # string operations, not Path objects: a set holds tens of thousands of names
    names = [n for n in names if not n.rpartition("/")[2].startswith(".")]
    if not names:
        raise DataError(f"dataset {path} is empty: expected <class>/<image> files")
    bad_depth = [n for n in names if n.count("/") != 1 or n.startswith("/") or n.endswith("/")]
    if bad_depth:
        raise DataError(f"dataset {path}: files must be <class>/<image>; these are not: {bad_depth[:5]}")
    not_images = [n for n in names if os.path.splitext(n)[1].lower() not in IMAGE_EXTENSIONS]
    if not_images:
        raise DataError(
            f"dataset {path} holds {len(not_images)} non-image file(s), e.g. {not_images[:5]}; "
            f"remove them (images end in {', '.join(IMAGE_EXTENSIONS)})"
        )
    names.sort()
    folder_of = [n.partition("/")[0] for n in names]
    classes = tuple(sorted(set(folder_of)))
    if len(classes) < 2:
        raise DataError(f"dataset {path} has one class ({classes[0]!r}); classification needs at least two "
                        "class folders")
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[c] for c in folder_of], dtype=np.int64)
    return ImageSource(path=path, is_zip=is_zip, files=tuple(names), classes=classes, labels=labels)


def _check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    """DataError for a member klas will not read: encrypted, an unknown compression method, or
    declaring more bytes than any image (a zip bomb)."""
    if info.flag_bits & 0x1:
        raise DataError(f"dataset {path}: {info.filename} is encrypted; give an unencrypted zip")
    if info.compress_type not in _ZIP_METHODS:
        raise DataError(f"dataset {path}: {info.filename} uses compression method {info.compress_type}, which klas "
                        "does not read; store or deflate the images")
    if info.file_size > MAX_IMAGE_BYTES:
        raise DataError(f"dataset {path}: {info.filename} declares {info.file_size} bytes, more than an image may "
                        f"hold ({MAX_IMAGE_BYTES}); remove it")


def samples_digest(source: ImageSource, indices: np.ndarray) -> str:
    """The identity of the samples `indices` of `source`, in order: a digest of their file names
    and labels. Caches record it, and every stage that pairs caches compares it."""
    import hashlib

    h = hashlib.sha256()
    for i in np.asarray(indices, dtype=np.int64).tolist():
        # a name that is not valid UTF-8 is listed with surrogate escapes: hashed as its raw bytes
        h.update(f"{source.files[i]}\0{int(source.labels[i])}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of range(n) into (D_t, D_v) indices, each sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise DataError(f"cannot split {n} images into a training and a validation part")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _find_set(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.zip", root / name):
        if candidate.exists():
            return candidate
    return None


def resolve_split(
    root: str | os.PathLike, split: str, *, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageSource, np.ndarray]:
    """The image set and the indices into it that make up `split` of the data root."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    train, test = (_find_set(root, "train"), _find_set(root, "test")) if root.is_dir() else (None, None)
    if train is None and test is None:
        train = test = root  # one image set serves every split
    chosen = test if split == "test" else train
    if chosen is None:
        raise DataError(f"data root {root} has no {'test' if split == 'test' else 'train'} set "
                        "(expected test.zip/test/ and train.zip/train/)")
    source = open_images(chosen)
    other = train if split == "test" else test
    if other is not None and other != chosen:
        _check_same_classes(source, open_images(other))
    if split == "test":
        return source, np.arange(len(source))
    d_t, d_v = split_indices(len(source), val_fraction, seed)
    return source, (d_t if split == "train" else d_v)


def _check_same_classes(a: ImageSource, b: ImageSource) -> None:
    """DataError unless two sets of one data root have the same class folders (renamed or missing
    folders would silently shift every label)."""
    if a.classes != b.classes:
        only_a, only_b = sorted(set(a.classes) - set(b.classes)), sorted(set(b.classes) - set(a.classes))
        raise DataError(f"{a.path} and {b.path} have different class folders ({only_a[:5]} only in the first, "
                        f"{only_b[:5]} only in the second); give both sets the same class names")


class ImageDataset(torch.utils.data.Dataset):
    """Images of `source` at `indices`, resized to `input_size` and normalised.

    Returns ``(image float32 [C, H, W], label int64)``.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, *, input_size, mean, std):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.size = (int(input_size[2]), int(input_size[1]))  # PIL wants (W, H)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def samples_digest(self) -> str:
        """The identity of these samples in order (`samples_digest`): results computed on them record it."""
        return samples_digest(self.source, self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        name = self.source.files[i]
        try:
            with warnings.catch_warnings():
                # klas bounds the pixel count itself (below): PIL's own, lower warning would be a second line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(self.source.read_bytes(i)))
            with img:
                w, h = img.size  # from the header, before any pixel is decoded
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(f"dataset {self.source.path}: {name} claims {w}x{h} pixels, more than klas decodes "
                                    f"({MAX_IMAGE_PIXELS}); remove it or shrink it")
                img = img.convert("RGB")
                if img.size != self.size:
                    img = img.resize(self.size, Image.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, zipfile.BadZipFile,
                NotImplementedError, Image.DecompressionBombError, RuntimeError, zlib.error, lzma.LZMAError) as e:
            # PIL and zipfile raise all of these for damaged or hostile files
            raise DataError(f"dataset {self.source.path}: cannot decode {name} ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}); remove or replace it") from None
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std, int(self.source.labels[i])


def make_loader(source: ImageSource, indices: np.ndarray, anchor, *, batch_size: int,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches of `source[indices]` in order, prepared for `anchor` (its size and normalisation)."""
    dataset = ImageDataset(source, indices, input_size=anchor.input_size, mean=anchor.mean, std=anchor.std)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def check_classes(source: ImageSource, anchor) -> None:
    """DataError unless the dataset has as many classes as the anchor's head, and the same class
    names in the same order where the anchor knows its classes."""
    if len(source.classes) != anchor.num_classes:
        raise DataError(
            f"dataset {source.path} has {len(source.classes)} classes but anchor {anchor.spec} predicts "
            f"{anchor.num_classes}; use a dataset of the anchor's classes (or a spec with num_classes=…)"
        )
    known = tuple(getattr(anchor, "class_names", ()) or ())
    if known and known != source.classes:
        wrong = [(k, d, a) for k, (d, a) in enumerate(zip(source.classes, known)) if d != a]
        k, d, a = wrong[0]
        raise DataError(
            f"dataset {source.path}: class {k} is the folder {d!r} but anchor {anchor.spec} was trained with "
            f"{a!r} there ({len(wrong)} class(es) differ); name the class folders as the anchor's classes "
            f"({', '.join(known)})"
        )


def split_for_anchor(root: str | os.PathLike, split: str, anchor, *, val_fraction: float = 0.1, seed: int = 0,
                     limit: int | None = None) -> tuple[ImageSource, np.ndarray]:
    """`resolve_split`, checked against the anchor's classes, then `limit` of it (`take_subset`)."""
    source, indices = resolve_split(root, split, val_fraction=val_fraction, seed=seed)
    check_classes(source, anchor)
    return source, take_subset(indices, limit, seed)


def take_subset(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """`limit` of `indices`, drawn at random (seeded) and kept in dataset order; all when None.

    A random draw, not the first `limit`: files are sorted by class, so a prefix would hold only
    the first classes.
    """
    if limit is None or limit >= len(indices):
        return indices
    if limit <= 0:
        raise UsageError(f"limit must be positive, got {limit}")
    chosen = np.random.default_rng((seed, 1)).choice(len(indices), size=limit, replace=False)
    return indices[np.sort(chosen)]


def prefetched(batches, depth: int = 2):
    """Iterates `batches` on a background thread, `depth` batches ahead: image decoding (PIL
    releases the GIL) overlaps the consumer's forward. Errors are raised where the batch would
    have been; a consumer that stops early leaves the thread to finish its current batch."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                ready.put((batch, None))
        except BaseException as e:  # handed to the consumer
            ready.put((None, e))
            return
        ready.put((done, None))

    thread = threading.Thread(target=produce, name="klas-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is done:
                return
            yield batch
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass


class DecodedOnce:
    """The batches `make()` yields, decoded on a background thread (`prefetched`) the first time they
    are iterated and kept when they take at most `nbytes` ≤ klas.limits.MAX_DECODED_BYTES; later
    passes replay the kept batches instead of decoding again. Batches beyond the bound are decoded
    anew on every pass (the same batches: `make` must give the same ones each time)."""

    def __init__(self, make, nbytes: int):
        self.make, self.keep, self.kept = make, nbytes <= MAX_DECODED_BYTES, None

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        kept = [] if self.keep else None
        for batch in prefetched(self.make()):
            if kept is not None:
                kept.append(batch)
            yield batch
        self.kept = kept  # a whole pass only: a pass stopped early keeps nothing
