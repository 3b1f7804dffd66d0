"""Held out means unseen, measured: ``split_overlap`` and ``trilemma data splits``."""

import re

import numpy as np
from PIL import Image

from trilemma.cli import main
from trilemma.data import FolderDataset, folder_overlap, split_overlap


def test_shapes_splits_share_nothing_and_keep_every_object_count():
    r = split_overlap("shapes", n=150)
    assert list(r["splits"]) == ["train", "val", "test", "novel"]
    assert [s["length"] for s in r["splits"].values()] == [50_000, 1000, 1000, 1000]
    for split, s in r["splits"].items():
        assert s["measured"] == 150 and sum(s["objects"].values()) == 150
        assert set(s["objects"]) == {"1", "2", "3"}
        assert s["novel_pair_items"] == (150 if split == "novel" else 0)
    assert len(r["overlap"]) == 6
    for row in r["overlap"]:
        assert (row["images"], row["captions"], row["compositions"]) == (0, 0, 0), row


def test_folder_overlap_counts_reencoded_copies_but_no_shared_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(40):  # 40 pictures, each saved twice: the same pixels in other bytes
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png", compress_level=0)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}b.png", compress_level=9)
        (tmp_path / f"{i:02d}.txt").write_text(f"picture {i}")
        (tmp_path / f"{i:02d}b.txt").write_text(f"picture {i}")
    (tmp_path / "copy.png").write_bytes((tmp_path / "00.png").read_bytes())  # same bytes: one split
    r = split_overlap(str(tmp_path), size=8)
    split_of = {f: s for s in ("train", "val", "test") for f in FolderDataset(tmp_path, split=s).files}
    assert split_of["copy.png"] == split_of["00.png"]
    straddling = sum(split_of[f"{i:02d}.png"] != split_of[f"{i:02d}b.png"] for i in range(40))
    assert straddling > 0  # the content hash cannot see a re-encoding; the measurement can
    assert sum(row["files"] for row in r["overlap"]) == 0
    assert sum(row["images"] for row in r["overlap"]) == straddling
    assert sum(row["captions"] for row in r["overlap"]) == straddling
    assert r["splits"]["all"]["length"] == 81
    assert sum(r["splits"][s]["length"] for s in ("train", "val", "test")) == 81


def test_cli_prints_split_sizes_and_zero_overlap(capsys):
    assert main(["data", "splits", "shapes", "--n", "40"]) == 0
    out = capsys.readouterr().out
    for split, length in (("train", 50_000), ("val", 1000), ("test", 1000), ("novel", 1000)):
        assert re.search(rf"^{split}\s+{length}\s+40\s", out, re.MULTILINE), out
    shared = re.findall(r"^(\w+ / \w+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.MULTILINE)
    assert len(shared) == 6 and all(cell == "0/40" for row in shared for cell in row[1:]), out


def test_near_duplicates_across_folders_are_found_and_listed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train, held = tmp_path / "train", tmp_path / "held"
    train.mkdir()
    held.mkdir()
    scene = lambda: np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 64x64 blocks
    pictures = [scene() for _ in range(6)]
    for i, pixels in enumerate(pictures):
        Image.fromarray(pixels).save(train / f"{i}.png")
    Image.fromarray(pictures[0]).save(held / "same.png")  # the same file bytes
    Image.fromarray(pictures[1]).save(held / "recoded.png", compress_level=0)  # the same pixels, other bytes
    brighter = np.clip(pictures[2].astype(int) * 0.8 + 40, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).resize((96, 96)).save(held / "edited.jpg", quality=80)  # other pixels, a near copy
    for i in range(3):
        Image.fromarray(scene()).save(held / f"new{i}.png")  # unseen
    r = folder_overlap(str(train), str(held))
    assert r["measured"] == [6, 6] and (r["files"], r["images"], r["near"]) == (1, 2, 3)
    assert {p["evaluated"]: p["reference"] for p in r["pairs"]} == {"same.png": "0.png", "recoded.png": "1.png",
                                                                     "edited.jpg": "2.png"}
    assert all(p["correlation"] >= 0.9 for p in r["pairs"])
    assert main(["data", "overlap", str(held), "--against", str(train)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"near duplicates .* 3/6", out) and "edited.jpg  ~  2.png" in out, out
    assert folder_overlap(str(train), str(held), threshold=1.0)["near"] < 3  # a stricter threshold drops the edit
    assert main(["data", "overlap", str(tmp_path / "nope"), "--against", str(train)]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "directory" in err and "read reference" not in err  # refused before reading anything


def test_folder_splits_count_near_duplicates_between_splits(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(40):  # each picture also saved darker as JPEG: other bytes, other pixels, a near copy
        pixels = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png")
        Image.fromarray((pixels * 0.7).astype(np.uint8)).save(tmp_path / f"{i:02d}b.jpg", quality=90)
    r = split_overlap(str(tmp_path), size=32)
    split_of = {f: s for s in ("train", "val", "test") for f in FolderDataset(tmp_path, split=s).files}
    straddling = sum(split_of[f"{i:02d}.png"] != split_of[f"{i:02d}b.jpg"] for i in range(40))
    assert straddling > 0 and sum(row["images"] for row in r["overlap"]) == 0
    assert sum(row["near"] for row in r["overlap"]) == straddling
