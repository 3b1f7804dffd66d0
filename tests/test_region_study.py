"""The region study with point prompts and on any folder: points quantized to the grid their bits
count, the region a disc around each point, the points' bits paid where the decoder reads them;
``eval reconstruction --region`` runs it on the images it evaluates and saves it under ``region``."""

import json
import math

import pytest
import torch
from PIL import Image

from conftest import spy_prompts
from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.metrics.prompted import (
    CONDITIONS,
    box_bits,
    point_bits,
    quantize_points,
    random_boxes,
    random_points,
    region_study,
)
from trilemma.metrics.scores import psnr
from trilemma.tokenizers.prompts import POINT_RADIUS, point_mask
from trilemma.tokens import Prompt

# Off the 1/4 grid, each rounding to another value: 0.33 -> 0.25, 0.62 -> 0.5, 0.4 -> 0.5, 0.2 -> 0.25.
POINTS = torch.tensor([[[0.33, 0.62]], [[0.4, 0.2]], [[0.62, 0.4]], [[0.2, 0.33]]])


@pytest.fixture
def tok(images):
    torch.manual_seed(0)
    tok = registry.build("tokenizer", "promptable-tiny").eval()
    tok.encode(images)  # an untrained VQ initialises its codebook on its first batch: before anything is compared
    return tok


def test_point_rows_have_the_box_studys_keys_and_count_the_points_bits_where_the_decoder_reads_them(tok, images):
    boxed = region_study(tok, images, torch.tensor([[[0.1, 0.1, 0.5, 0.5]]]), [1, 2])
    pointed = region_study(tok, images, points=POINTS, budgets=[1, 2])
    two = region_study(tok, images, points=torch.cat([POINTS, 1 - POINTS], 1), budgets=[1])
    both = region_study(tok, images, torch.tensor([[[0.1, 0.1, 0.5, 0.5]]]), [1], points=POINTS)
    assert [set(r) for r in pointed] == [set(r) for r in boxed]
    assert abs(point_bits(1) - 2 * math.log2(257)) < 1e-9 and point_bits(3, levels=4) == 3 * 2 * math.log2(5)
    per_token = tok.spec.bits_per_token
    for r in pointed:
        assert r["bits_box"] == point_bits(1) and r["bits_tokens"] == r["k"] * per_token
        assert r["bits_total_neither"] == r["bits_total_encoder"] == r["bits_tokens"]
        assert r["bits_total_decoder"] == r["bits_total_both"] == r["bits_tokens"] + point_bits(1)
        assert all(math.isfinite(r[f"psnr_{where}_{c}"]) for where in ("in_box", "outside") for c in CONDITIONS)
    assert two[0]["bits_box"] == point_bits(2) and both[0]["bits_box"] == box_bits(1) + point_bits(1)
    # The points reach the tokenizer: told to the decoder, its reconstruction changes inside the discs.
    assert pointed[0]["psnr_in_box_decoder"] != pointed[0]["psnr_in_box_neither"]


def test_the_points_are_quantized_and_the_region_is_the_disc_around_each(tok, images, monkeypatch):
    quantized = quantize_points(POINTS, 4)
    assert torch.equal(quantized, torch.tensor([[[0.25, 0.5]], [[0.5, 0.25]], [[0.5, 0.5]], [[0.25, 0.25]]]))
    disc = point_mask(Prompt(points=quantized), 4, 32, images.device)
    assert not torch.equal(disc, point_mask(Prompt(points=POINTS), 4, 32, images.device))  # rounding moves the disc
    assert 0.04 < disc.mean() < 0.1  # a disc of radius 0.15: ~7% of the image
    encode, seen = tok.encode, []

    def spy_encode(x, prompt=None):
        seen.append(None if prompt is None or prompt.points is None else prompt.points)
        return encode(x, prompt)

    monkeypatch.setattr(tok, "encode", spy_encode)
    rows = region_study(tok, images, points=POINTS, budgets=[1, 3], levels=4, batch=3)  # chunks of 3: 3 + 1 images
    sent = [p for p in seen if p is not None]
    assert len(seen) == 4 and torch.equal(torch.cat(sent), quantized)  # per image, chunk by chunk, on the grid
    monkeypatch.setattr(tok, "encode", encode)
    for r in rows:  # neither and both by hand: the public path, the disc around the quantized point measured
        plain = tok.decode(tok.encode(images, Prompt(budget=r["k"]))).clamp(-1, 1)
        pointed = tok.decode(tok.encode(images, Prompt(budget=r["k"], points=quantized))).clamp(-1, 1)
        assert abs(psnr(plain, images, mask=disc).mean().item() - r["psnr_in_box_neither"]) < 1e-4
        assert abs(psnr(pointed, images, mask=disc).mean().item() - r["psnr_in_box_both"]) < 1e-4
        assert abs(psnr(pointed, images, mask=1 - disc).mean().item() - r["psnr_outside_both"]) < 1e-4


def test_the_decoder_conditions_decode_with_the_points_and_the_encoder_ones_encode_with_them(tok, images, monkeypatch):
    _, decoded = spy_prompts(tok, monkeypatch, "points")
    region_study(tok, images, points=POINTS, budgets=[1, 2])
    for k in (1, 2):  # (points in the encoder, points in the decoder) of neither, encoder, decoder, both
        assert sorted((e, d) for n, e, d in decoded if n == k) == [(False, False), (False, True), (True, False), (True, True)]


def test_random_points_and_boxes_are_seeded_spread_and_drawn_several_per_image():
    points = random_points(300, seed=3)
    assert points.shape == (300, 1, 2) and torch.equal(points, random_points(300, seed=3))
    assert not torch.equal(points, random_points(300, seed=4))
    assert points.min() >= 0.1 and points.max() <= 0.9  # the default margin: most of the disc inside
    assert points.min() < 0.12 and points.max() > 0.88  # uniform over the allowed square
    assert random_points(5, margin=0.3).sub(0.5).abs().max() <= 0.2
    several = random_points(50, seed=1, count=3)
    assert several.shape == (50, 3, 2) and not torch.equal(several[:, 0], several[:, 1])
    boxes = random_boxes(50, seed=1, count=2)
    assert boxes.shape == (50, 2, 4) and (boxes >= 0).all() and (boxes <= 1).all()
    assert not torch.equal(boxes[:, 0], boxes[:, 1]) and (boxes[..., :2] <= boxes[..., 2:]).all()
    for call, name in ((lambda: random_points(2, margin=0.5), "`margin`"), (lambda: random_points(2, count=0), "`count`")):
        with pytest.raises(ValueError, match=name):
            call()


def test_region_study_refuses_a_prompt_it_cannot_measure(tok, images):
    with pytest.raises(ValueError, match="`boxes` or `points`"):
        region_study(tok, images, budgets=[1])
    with pytest.raises(ValueError, match=r"`points` must be \[N or 1, P, 2\]"):
        region_study(tok, images, points=POINTS[:3], budgets=[1])


# ----------------------------------------------------------------------------- the CLI


def _folder(path, n=8, size=32):
    """``n`` synthetic PNGs: a coloured square on a gradient, each at its own place."""
    path.mkdir()
    ramp = torch.linspace(0, 255, size)
    for i in range(n):
        pixels = torch.stack([ramp[None].expand(size, size), ramp[:, None].expand(size, size),
                              torch.full((size, size), 40.0 * (i % 6))], -1)
        x, y = 3 * i % (size - 8), 5 * i % (size - 8)
        pixels[y : y + 8, x : x + 8] = torch.tensor([250.0, 30.0, 30.0])
        Image.fromarray(pixels.byte().numpy()).save(path / f"{i}.png")
    return path


def test_eval_reconstruction_runs_the_point_study_on_the_images_it_evaluates(tmp_path, tok, capsys):
    from trilemma.studies.images import load_images

    folder, out = _folder(tmp_path / "photos"), tmp_path / "eval"
    tok_dir = checkpoint.save(tok, tmp_path / "tok")
    assert main(["eval", "reconstruction", "--tokenizer", str(tok_dir), "--data", str(folder), "--split", "all",
                 "--n", "6", "--features", "none", "--no-lpips", "--region", "points", "--seed", "5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "random points (disc of radius 0.15" in printed and "in: neither" in printed
    saved = json.loads((out / "reconstruction.json").read_text())
    region = saved["region"]
    assert {k: region["protocol"][k] for k in ("data", "split", "images", "seed", "budgets")} == {
        "data": str(folder), "split": "all", "images": 6, "seed": 5, "budgets": [1, 2, 4, 8]}
    assert list(region["tables"]) == ["random points"]  # no boxes asked; a folder has no first objects
    table = region["tables"]["random points"]
    assert table["prompt"] == "points" and table["point_radius"] == POINT_RADIUS
    assert table["bits_per_prompt"] == point_bits(1) and all("region" not in row for row in saved["rows"])
    # The same six images and the points --seed draws: the study by hand agrees.
    images, _ = load_images(str(folder), 6, 32, split="all", progress=False)
    again = checkpoint.load(tok_dir, kind="tokenizer")
    want = region_study(again, images, points=random_points(6, seed=5), budgets=[1, 2, 4, 8])
    assert [r["k"] for r in table["rows"]] == [1, 2, 4, 8]
    for got, expected in zip(table["rows"], want):
        for key in ("psnr", "psnr_in_box_both", "psnr_in_box_decoder", "psnr_outside_neither", "bits_total_both"):
            assert abs(got[key] - expected[key]) < 1e-4, key
    by_budget = {r["budget"]: r["psnr"] for r in saved["rows"]}
    assert all(abs(by_budget[r["k"]] - r["psnr"]) < 1e-3 for r in table["rows"])  # the images the metrics saw


def test_eval_reconstruction_on_shapes_adds_the_first_object_boxes_and_tradeoff_studies_the_promptable_one(
        tmp_path, tok, tiny_vq, capsys):
    tok_dir, vq_dir = checkpoint.save(tok, tmp_path / "tok"), checkpoint.save(tiny_vq, tmp_path / "vq")
    assert main(["eval", "reconstruction", "--tokenizer", str(tok_dir), "--n", "4", "--features", "none",
                 "--no-lpips", "--region", "both", "--out", str(tmp_path / "rec")]) == 0
    tables = json.loads((tmp_path / "rec" / "reconstruction.json").read_text())["region"]["tables"]
    assert list(tables) == ["random boxes", "first-object boxes", "random points"]
    assert tables["first-object boxes"]["box_sides"] == [1 / 3, 1 / 3]
    assert tables["random boxes"]["box_sides"] == list(tok.config.box_sides)
    assert tables["random boxes"]["bits_per_prompt"] == box_bits(1) == tables["random boxes"]["rows"][0]["bits_box"]
    capsys.readouterr()
    assert main(["eval", "tradeoff", "--tokenizers", str(vq_dir), str(tok_dir), "--n", "4", "--features", "none",
                 "--no-lpips", "--region", "points", "--out", str(tmp_path / "trade")]) == 0
    rows = json.loads((tmp_path / "trade" / "report.json").read_text())["rows"]
    studied = [r["tokenizer"] for r in rows if "region" in r]
    assert studied == [rows[-1]["tokenizer"]] and rows[-1]["budget"] == 8  # the promptable one's full budget row
    assert "random points" in capsys.readouterr().out


def test_region_on_a_tokenizer_without_prompts_is_one_error_line_naming_the_flag(tmp_path, tiny_vq, capsys):
    vq_dir = checkpoint.save(tiny_vq, tmp_path / "vq")
    assert main(["eval", "reconstruction", "--tokenizer", str(vq_dir), "--n", "4", "--features", "none",
                 "--region", "points", "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: --region")
    assert "promptable" in err and "vq takes no prompts" in err and "`" not in err
    assert not (tmp_path / "eval" / "reconstruction.json").exists()
