"""Datasets: folder and zip image sets, the D_t / D_v split, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from klas.extraction.data import ImageDataset, open_images, resolve_split, split_indices
from klas.errors import DataError


def test_folder_and_zip_list_the_same_images(shapes_dir, shapes_zip):
    a, b = open_images(shapes_dir), open_images(shapes_zip)
    assert a.files == b.files and len(a) == 120
    assert a.classes[0] == "circle" and sorted(a.classes) == list(a.classes)
    np.testing.assert_array_equal(a.labels, b.labels)
    da = ImageDataset(a, np.arange(3), input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    db = ImageDataset(b, np.arange(3), input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.testing.assert_close(da[2][0], db[2][0])
    x, y = da[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_resize_to_anchor_input(shapes_dir):
    ds = ImageDataset(open_images(shapes_dir), np.arange(2), input_size=(3, 48, 40), mean=(0,) * 3, std=(1,) * 3)
    assert ds[0][0].shape == (3, 48, 40)


def test_split_is_deterministic_disjoint_and_complete():
    t1, v1 = split_indices(1000, 0.1, seed=5)
    t2, v2 = split_indices(1000, 0.1, seed=5)
    np.testing.assert_array_equal(t1, t2)
    assert len(v1) == 100 and not set(t1) & set(v1) and set(t1) | set(v1) == set(range(1000))
    assert not np.array_equal(v1, split_indices(1000, 0.1, seed=6)[1])


def test_single_image_set_serves_every_split(shapes_zip):
    src, test = resolve_split(shapes_zip, "test")
    _, train = resolve_split(shapes_zip, "train", val_fraction=0.25)
    _, val = resolve_split(shapes_zip, "val", val_fraction=0.25)
    assert len(test) == 120 and len(train) == 90 and len(val) == 30


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="empty"):
        open_images(tmp_path)


def test_non_image_file_is_named(tmp_path, shapes_dir):
    import shutil

    shutil.copytree(shapes_dir, tmp_path / "d")
    (tmp_path / "d" / "circle" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="circle/notes.txt"):
        open_images(tmp_path / "d")


def test_undecodable_image_is_named(tmp_path, shapes_dir):
    import shutil

    shutil.copytree(shapes_dir, tmp_path / "d")
    (tmp_path / "d" / "square" / "0003.png").write_bytes(b"not a png")
    src = open_images(tmp_path / "d")
    ds = ImageDataset(src, np.arange(len(src)), input_size=(3, 32, 32), mean=(0,) * 3, std=(1,) * 3)
    k = src.files.index("square/0003.png")
    with pytest.raises(DataError, match="square/0003.png"):
        ds[k]


def test_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_images(tmp_path / "nope")


def test_one_class_dataset_is_refused(tmp_path):
    from PIL import Image

    folder = tmp_path / "one" / "cat"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"{k}.png")
    with pytest.raises(DataError, match="has one class"):
        open_images(tmp_path / "one")
