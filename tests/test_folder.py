"""FolderDataset: any folder loads as RGB at the requested size; bad files are reported."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from trilemma.data import FolderDataset, collate
from trilemma.data.folder import assign_splits

SIZE = 16
# the fixture has one malformed metadata line on purpose; only the first test asserts on it
pytestmark = pytest.mark.filterwarnings("ignore:.*malformed metadata")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "good.png")
    (root / "good.txt").write_text("A good picture\n")
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, :, :3] = 255  # white everywhere, but only the right half is opaque
    rgba[:, 10:, 3] = 255
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(np.full((25, 25), 200, dtype=np.uint8)).save(root / "gray.png")
    Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8)).save(root / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(root / "sub/photo.jpg")
    (root / "sub/metadata.jsonl").write_text(
        json.dumps({"file_name": "photo.jpg", "text": "a photo"}) + "\n")
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "gray.png", "caption": "grey square"}) + "\n" + "{not json\n")
    full = root / "sub/photo.jpg"
    (root / "corrupt.jpg").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    (root / ".hidden.png").write_bytes(b"not an image")  # hidden files are ignored
    (root / "notes.md").write_text("not an image either")
    return root


def _load_all(ds):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    return items, [str(w.message) for w in caught]


def test_loads_every_good_image_and_reports_the_corrupt_one(folder):
    with pytest.warns(UserWarning, match="malformed metadata"):
        ds = FolderDataset(folder, size=SIZE)
    assert len(ds) == 6 and ds.files[0] == "corrupt.jpg"
    items, messages = _load_all(ds)
    for item in items:
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        assert item["attributes"] is None
    names = {item["path"].replace("\\", "/").split("imgs/")[1] for item in items}
    assert names == {"good.png", "rgba.png", "gray.png", "tiny.png", "sub/photo.jpg"}
    assert list(ds.skipped) == ["corrupt.jpg"]
    assert any("corrupt.jpg" in m for m in messages)
    assert "skipped 1" in ds.report() and "corrupt.jpg" in ds.report()
    batch = collate(items)
    assert batch["image"].shape == (6, 3, SIZE, SIZE) and len(batch["path"]) == 6


def test_captions_from_jsonl_and_sidecar(folder):
    ds = FolderDataset(folder, size=SIZE)
    caption = {f: ds.caption(f) for f in ds.files}
    assert caption["good.png"] == "A good picture"
    assert caption["sub/photo.jpg"] == "a photo"  # file_name is relative to the jsonl's folder
    assert caption["gray.png"] == "grey square"  # "caption" key accepted
    assert caption["tiny.png"] == ""


def test_modes_converted_to_rgb(folder):
    ds = FolderDataset(folder, size=SIZE)
    get = {f: ds.load(i)["image"] for i, f in enumerate(ds.files) if f != "corrupt.jpg"}
    rgba = get["rgba.png"]
    assert (rgba[:, :, :6] == -1).all()  # transparent half composited on black
    assert (rgba[:, :, -6:] == 1).all()  # opaque white half stays white
    gray = get["gray.png"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.allclose(gray, torch.full_like(gray, 200 / 127.5 - 1))
    tiny = get["tiny.png"]  # 1x1 upsampled to a constant image
    expected = torch.tensor([10, 20, 30]).float().div(127.5).sub(1).view(3, 1, 1)
    assert torch.allclose(tiny, expected.expand(3, SIZE, SIZE), atol=1e-6)


def test_scan_reports_without_raising(folder):
    ds = FolderDataset(folder, size=SIZE)
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        report = ds.scan()
    assert "skipped 1 unreadable image(s) of 6" in report


def test_all_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG garbage")
    ds = FolderDataset(tmp_path)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="could be read"):
        ds[0]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images in .*\.png"):
        FolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere")


def _distinct_pngs(root, n: int, start: int = 0) -> list[str]:
    """n small images of distinct colours (so distinct bytes), named by number."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(np.full((4, 4, 3), (i % 256, i // 256, 7), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return [f"{i:03d}.png" for i in range(start, start + n)]


def _splits(root) -> dict[str, list[str]]:
    return {split: FolderDataset(root, split=split).files for split in ("all", "train", "val", "test")}


def test_content_split_is_disjoint_deterministic_and_keeps_copies_together(tmp_path):
    _distinct_pngs(tmp_path, 120)
    copies = tmp_path / "copies"  # each of 6 images planted again under 12 other names
    copies.mkdir()
    for k in range(6):
        for j in range(12):
            (copies / f"{k}-{j}.png").write_bytes((tmp_path / f"{k:03d}.png").read_bytes())
    splits = _splits(tmp_path)
    train, val, test = (set(splits[s]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test  # val and test are different images
    assert sorted(train | val | test) == splits["all"]
    assert val and test and len(train) > 0.8 * len(splits["all"])
    for k in range(6):
        group = {f"{k:03d}.png"} | {f"copies/{k}-{j}.png" for j in range(12)}
        assert sum(bool(group & part) for part in (train, val, test)) == 1, k  # same bytes, one split
    assert _splits(tmp_path) == splits  # deterministic
    (tmp_path / "000.png").rename(tmp_path / "renamed.png")  # the content decides, not the name
    moved = _splits(tmp_path)
    assert [s for s in ("train", "val", "test") if "renamed.png" in moved[s]] == \
        [s for s in ("train", "val", "test") if "000.png" in splits[s]]


def test_three_distinct_images_fill_every_split(tmp_path):
    _distinct_pngs(tmp_path, 3)
    splits = _splits(tmp_path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 1, 1]


def test_too_small_for_a_split(tmp_path):
    _distinct_pngs(tmp_path, 1)
    (tmp_path / "copy.png").write_bytes((tmp_path / "000.png").read_bytes())  # one content, two files
    held = []
    for split in ("train", "val", "test"):
        try:
            held.append((split, FolderDataset(tmp_path, split=split).files))
        except ValueError as err:
            assert "split='all'" in str(err)
    assert len(held) == 1 and held[0][1] == ["000.png", "copy.png"]


def _at(u: float) -> str:
    """A content digest whose hash falls at ``u`` in [0, 1)."""
    return f"{int(u * 2**64):016x}" + "0" * 48


@pytest.mark.parametrize("positions, expected", [
    ([0.3, 0.5, 0.7], ["val", "test", "train"]),  # 3 contents: one in each split
    ([0.01, 0.02, 0.03], ["val", "test", "train"]),  # ... even when all fall below 5%
    ([0.01, 0.02, 0.06, 0.5], ["val", "val", "test", "train"]),  # thresholds: 5% val, next 5% test
    ([0.5, 0.6], ["train", "train"]),  # fewer than 3: thresholds only
    ([0.01, 0.07], ["val", "test"]),
])
def test_the_split_rule(positions, expected):
    assert list(assign_splits({str(u): _at(u) for u in positions}).values()) == expected


def test_random_crops_are_views_of_the_image_seeded_and_refused_on_shapes(tmp_path):
    from trilemma.data import load_dataset

    # A horizontal ramp: a crop's left-to-right mean tells where (and how wide) it was taken.
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (100, 1, 3))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    centre = FolderDataset(tmp_path, size=16)[0]["image"]
    crops = FolderDataset(tmp_path, size=16, random_crop=0.3)
    torch.manual_seed(0)
    first = [crops[0]["image"] for _ in range(8)]
    torch.manual_seed(0)
    again = [crops[0]["image"] for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the torch seed repeats the crops
    spans = [float(x[0, 0, -1] - x[0, 0, 0]) for x in first]
    assert len({round(s, 3) for s in spans}) == 8  # each read another view
    full_span = float(centre[0, 0, -1] - centre[0, 0, 0])
    assert all(0.25 * full_span < s <= full_span + 1e-3 for s in spans)  # never smaller than 30% of the side
    with pytest.raises(ValueError, match="random_crop"):
        FolderDataset(tmp_path, size=16, random_crop=1.5)
    with pytest.raises(ValueError, match="folder"):
        load_dataset("shapes", size=16, random_crop=0.5)
