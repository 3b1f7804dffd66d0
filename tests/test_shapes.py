"""The embedded shapes dataset: deterministic pixels, exact captions, exact ground truth."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trilemma.data import (COLORS, NOVEL_PAIRS, POSITIONS, SHAPES, SIZES, ShapesDataset,
                           attributes_to_cells, cells_to_attributes, collate, composition_key,
                           load_dataset, parse_caption, split_of)
from trilemma.data.shapes import RGB, caption, render

ROOT = Path(__file__).resolve().parents[1]

DIGEST = """
import hashlib
from trilemma.data import ShapesDataset
h = hashlib.sha256()
for split in ("train", "val", "novel"):
    ds = ShapesDataset(split=split, size=32, seed=7)
    for i in (0, 1, 2, 999, 123456):
        item = ds[i]
        h.update(item["image"].numpy().tobytes())
        h.update(item["caption"].encode())
print(h.hexdigest())
"""


def test_bit_identical_across_processes():
    # a fresh interpreter with a different PYTHONHASHSEED must draw the very same items
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", DIGEST], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    local = {}
    exec(DIGEST.replace("print(h.hexdigest())", "digest = h.hexdigest()"), local)
    assert out.stdout.strip() == local["digest"]


def test_items_differ_by_index_split_and_seed():
    train = ShapesDataset("train")
    images = [train[i]["image"] for i in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(images[i], images[j])
    val, test, other = ShapesDataset("val"), ShapesDataset("test"), ShapesDataset(seed=1)
    for i in range(8):
        assert not torch.equal(images[i], val[i]["image"])
        assert not torch.equal(val[i]["image"], test[i]["image"])
        assert not torch.equal(images[i], other[i]["image"])
    assert torch.equal(images[3], ShapesDataset("train")[3]["image"])  # same item, same pixels


def test_item_format_and_lengths():
    ds = ShapesDataset("train")
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert 1 <= len(item["attributes"]) <= 3
    assert item["split"] == "train" and item["novel_pairs"] == []
    assert [len(ShapesDataset(s)) for s in ("train", "val", "test", "novel")] == [50_000, 1000, 1000, 1000]
    assert len(ShapesDataset("val", length=5)) == 5
    assert ds[10**9]["caption"]  # the stream is infinite
    with pytest.raises(IndexError):
        ds[-1]
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("dev")


def _attributes(split, n):
    ds = ShapesDataset(split)
    return (ds.attributes(i) for i in range(n))


def test_attributes_are_valid_and_in_distinct_cells():
    for attrs in _attributes("train", 300):
        assert [POSITIONS.index(a["position"]) for a in attrs] == \
            sorted({POSITIONS.index(a["position"]) for a in attrs})  # distinct, raster order
        for a in attrs:
            assert a["shape"] in SHAPES and a["color"] in COLORS and a["size"] in SIZES


def test_every_caption_parses_back_to_its_attributes():
    for attrs in _attributes("val", 300):
        assert parse_caption(caption(attrs)) == attrs
        assert torch.equal(attributes_to_cells(parse_caption(caption(attrs))),
                           attributes_to_cells(attrs))


def test_parse_caption_lenient_and_errors():
    assert parse_caption("A red circle at the top left.") == [
        {"shape": "circle", "color": "red", "size": None, "position": "top left"}]
    assert parse_caption("a small blue cross in the centre and a large cyan square at the "
                         "bottom")[1] == {"shape": "square", "color": "cyan", "size": "large",
                                          "position": "bottom"}
    with pytest.raises(ValueError, match="'purple'"):
        parse_caption("a purple circle at the top")
    with pytest.raises(ValueError, match="'hexagon'"):
        parse_caption("a red hexagon at the top")
    with pytest.raises(ValueError, match="position"):
        parse_caption("a red circle")
    with pytest.raises(ValueError, match="'sideways'"):
        parse_caption("a red circle at the top sideways")


def test_cells_round_trip():
    for attrs in _attributes("test", 200):
        cells = attributes_to_cells(attrs)
        assert cells.shape == (9, 3) and cells.dtype == torch.long
        assert int((cells[:, 0] > 0).sum()) == len(attrs)
        assert cells_to_attributes(cells) == attrs
    partial = [{"shape": "cross", "color": "green", "size": None, "position": "right"}]
    assert attributes_to_cells(partial)[5].tolist() == [4, 1, -1]  # unspecified size -> -1
    assert cells_to_attributes(attributes_to_cells(partial)) == partial
    with pytest.raises(ValueError, match="share"):
        attributes_to_cells(partial * 2)


@pytest.mark.parametrize("size", [15, 257, 0])
def test_size_out_of_range(size):
    with pytest.raises(ValueError, match=r"\[16, 256\]"):
        ShapesDataset(size=size)


@pytest.mark.parametrize("size", [16, 48, 256])
def test_any_size_in_range(size):
    assert ShapesDataset(size=size)[0]["image"].shape == (3, size, size)


def _interior(size: int, cell: int) -> tuple[slice, slice]:
    """Pixels lying wholly inside a grid cell."""
    row, col = divmod(cell, 3)
    lo = lambda k: -(-k * size // 3)  # noqa: E731  ceil(k * size / 3)
    hi = lambda k: (k * size) // 3  # noqa: E731
    return slice(lo(row), hi(row + 1)), slice(lo(col), hi(col + 1))


@pytest.mark.parametrize("size", [32, 64])
def test_objects_drawn_with_their_colour_in_their_cell(size):
    ds = ShapesDataset("train", size=size)
    seen = 0
    for i in range(60):
        item = ds[i]
        pixels = ((item["image"] + 1) * 127.5).round().permute(1, 2, 0).numpy()
        by_cell = {POSITIONS.index(a["position"]): a for a in item["attributes"]}
        for cell in range(9):
            rows, cols = _interior(size, cell)
            region = pixels[rows, cols].reshape(-1, 3)
            if cell not in by_cell:
                assert region.max() == 0  # empty cells stay black
                continue
            a = by_cell[cell]
            on = np.array(RGB[a["color"]]) > 0
            mean = region.mean(axis=0)
            assert (mean[~on] == 0).all()  # no other colour leaks into the cell
            # coverage of the cell: large objects cover much more than small ones
            assert (mean[on] > (60 if a["size"] == "large" else 15)).all(), (i, a, mean)
            centre = pixels[int((divmod(cell, 3)[0] + 0.5) * size / 3),
                            int((divmod(cell, 3)[1] + 0.5) * size / 3)]
            assert (centre == np.array(RGB[a["color"]])).all()  # every shape covers its centre
            seen += a["size"] == "large"
    assert seen > 10


def test_antialiased_edges_and_shapes_distinct():
    images = {s: render([{"shape": s, "color": "red", "size": "large", "position": "center"}])
              for s in SHAPES}
    for s, img in images.items():
        red = img[..., 0]
        assert ((red > 0) & (red < 255)).any(), s  # partial coverage on the edges
    flat = [img.astype(int) for img in images.values()]
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            # at 32x32 two different shapes differ in many pixels, not a few
            assert (np.abs(flat[i] - flat[j]).sum(-1) > 64).sum() >= 8


def test_load_dataset_and_collate(tmp_path):
    ds = load_dataset("shapes", split="val", size=24, length=6)
    assert isinstance(ds, ShapesDataset) and len(ds) == 6
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 24, 24)
    assert len(batch["caption"]) == 4 and len(batch["attributes"]) == 4
    with pytest.raises(ValueError, match="expected 'shapes' or a directory of images"):
        load_dataset(str(tmp_path / "nope"))


# ------------------------------------------------------------------ held out means unseen
def _composition(attrs: list[dict]) -> tuple:
    """What fully determines a shapes image (the renderer has no jitter): its objects, by cell."""
    return tuple(sorted((POSITIONS.index(a["position"]), a["shape"], a["color"], a["size"])
                        for a in attrs))


def _pairs(attrs: list[dict]) -> set[tuple[str, str]]:
    return {(a["color"], a["shape"]) for a in attrs}


@pytest.fixture(scope="module")
def train_head():
    """train[:5000]: each item's composition and its pixels' digest."""
    ds = ShapesDataset("train")
    items = [ds[i] for i in range(5000)]
    return ([_composition(it["attributes"]) for it in items],
            [hashlib.sha256(it["image"].numpy().tobytes()).hexdigest() for it in items])


@pytest.mark.parametrize("split", ["val", "test", "novel"])
def test_held_out_splits_share_no_composition_and_no_image_with_train(split, train_head):
    compositions, digests = train_head
    held = ShapesDataset(split)
    items = [held[i] for i in range(1000)]
    seen = {_composition(it["attributes"]) for it in items}
    pixels = {hashlib.sha256(it["image"].numpy().tobytes()).hexdigest() for it in items}
    assert not seen & set(compositions)
    assert not pixels & set(digests)
    if split == "test":
        val = {_composition(ShapesDataset("val").attributes(i)) for i in range(1000)}
        assert not seen & val


def test_novel_pairs_only_in_the_novel_split():
    novel = set(NOVEL_PAIRS)
    assert 2 <= len(novel) <= 3
    train = ShapesDataset("train")
    assert not any(_pairs(train.attributes(i)) & novel for i in range(5000))
    assert train[0]["novel_pairs"] == [] and train[0]["split"] == "train"
    ds = load_dataset("shapes", split="novel")
    assert len(ds) == 1000
    found = set()
    for i in range(1000):
        item = ds[i]
        pairs = _pairs(item["attributes"]) & novel
        assert pairs and item["split"] == "novel"
        assert item["novel_pairs"] == sorted(f"{c} {s}" for c, s in pairs)
        found |= pairs
    assert found == novel  # every held-out pair is asked for


def test_each_split_keeps_every_object_count_and_varied_one_object_scenes():
    for split in ("train", "val", "test", "novel"):
        ds = ShapesDataset(split)
        drawn = [ds.attributes(i) for i in range(900)]
        counts = np.bincount([len(attrs) for attrs in drawn], minlength=4)[1:]
        assert (counts > 250).all(), (split, counts)  # the count is drawn before the objects
        ones = {_composition(attrs) for attrs in drawn if len(attrs) == 1}
        assert len(ones) >= 20, (split, len(ones))  # one-object scenes held out are not a handful


def test_a_compositions_split_depends_on_its_objects_only():
    objects = ShapesDataset("test").attributes(0)
    assert split_of(objects) == split_of(objects[::-1]) == "test"  # the canonical form sorts by cell
    assert composition_key(objects) == composition_key(objects[::-1])
    red_triangle = {"shape": "triangle", "color": "red", "size": "small", "position": "top"}
    assert split_of([red_triangle] + [o for o in objects if o["position"] != "top"]) == "novel"
    # neither the seed nor the size moves a composition: a model trained at seed 1 is tested at 0
    other_seed = {_composition(ShapesDataset("train", seed=1, size=48).attributes(i)) for i in range(3000)}
    assert not other_seed & {_composition(ShapesDataset("test").attributes(i)) for i in range(1000)}
