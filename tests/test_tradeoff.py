"""Trade-off sweep: the Pareto front, the report writer, and an end-to-end sweep of tiny tokenizers."""

import json
import math

import pytest
import torch
from PIL import Image

from trilemma import checkpoint, registry
from trilemma.metrics.features import DomainFeatures
from trilemma.metrics.reconstruction import evaluate_reconstruction
from trilemma.studies import tradeoff as tradeoff_module
from trilemma.studies.images import load_images
from trilemma.studies.report import markdown_table, write_report
from trilemma.studies.tradeoff import discrete_front, pareto_front, plot_bits, tradeoff, trilemma_weights

INF = math.inf


# ----------------------------------------------------------------------------- Pareto front


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    points = [
        (100, 20.0),  # 0 front
        (200, 25.0),  # 1 front
        (150, 19.0),  # 2 dominated by 0 (fewer bits, higher PSNR)
        (200, 24.0),  # 3 dominated by 1 (same bits, lower PSNR)
        (50, 10.0),  # 4 front: the cheapest
        (300, INF),  # 5 front: lossless
        (400, INF),  # 6 dominated by 5 (same PSNR, more bits)
        (None, 30.0),  # 7 no bit count (continuous): never on the front
        (100, float("nan")),  # 8 no score
        (100, 20.0),  # 9 equal to 0: equal points are both kept
    ]
    assert pareto_front(points) == [4, 0, 9, 1, 5]


def test_pareto_front_minimising_both_axes_for_rfid():
    points = [(100, 5.0), (200, 3.0), (150, 6.0), (300, 3.0), (400, 0.5)]
    assert pareto_front(points, maximize=False) == [0, 1, 4]
    assert pareto_front([]) == []
    assert pareto_front([(10, 1.0)]) == [0]


# ----------------------------------------------------------------------------- report


def _row(name, discrete, bits, psnr, rfid, floats=None, effective=None):
    return dict(tokenizer=name, discrete=discrete, tokens_per_image=64, bits_per_image=bits, floats_per_image=floats,
                effective_bits_per_image=effective, storage_bits_per_image=None if floats is None else 32 * floats,
                psnr=psnr, ssim=0.9, lpips=None, rfid=rfid, rfid_floor=0.25, codebook_usage=0.5 if discrete else None,
                perplexity=10.0 if discrete else None, encode_images_per_s=1000.0, decode_images_per_s=2000.0,
                image_size=32)


CRAFTED = [
    _row("patch4-8bit", True, 24576, INF, 0.0),
    _row("patch4-4bit", True, 12288, 34.3, 0.4),
    _row("vq-f4", True, 512, 24.0, 3.0),
    _row("vq-f4-bad", True, 1024, 20.0, 5.0),
    _row("ae-f4", False, None, 31.0, 1.0, floats=256, effective=900),
]


def _assert_png(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 200


def test_report_writes_json_markdown_and_pngs(tmp_path):
    files = write_report(CRAFTED, tmp_path, settings={"data": "shapes", "n": 8})
    assert {"json", "markdown", "psnr_plot", "rfid_plot", "triangle_plot"} <= set(files)

    payload = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert [r["tokenizer"] for r in payload["rows"]] == [r["tokenizer"] for r in CRAFTED]
    assert payload["rows"][0]["psnr"] == "inf"  # JSON has no infinity
    assert payload["rows"][4]["bits_per_image"] is None  # never a fake bit count
    assert payload["pareto_front"]["psnr"] == ["vq-f4", "patch4-4bit", "patch4-8bit"]

    md = (tmp_path / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(CRAFTED)
    for row in CRAFTED:
        assert any(line.startswith(f"| {row['tokenizer']} ") for line in table)
    ae_line = next(line for line in table if line.startswith("| ae-f4 "))
    assert "| 900 effective (256 floats) | 8,192 |" in ae_line  # effective bits, then 32 bits x floats stored
    assert "| rFID (floor 0.25) |" in table[0]
    assert "∞ (lossless)" in md

    for key in ("psnr_plot", "rfid_plot", "triangle_plot"):
        _assert_png(files[key])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_report_without_rfid_skips_that_plot(tmp_path):
    rows = [dict(r, rfid=None) for r in CRAFTED[:2]]
    files = write_report(rows, tmp_path)
    assert "rfid_plot" not in files and not (tmp_path / "rfid_vs_bits.png").exists()
    assert "rFID: not computed" in (tmp_path / "report.md").read_text()
    _assert_png(files["psnr_plot"])


def test_trilemma_weights_corners():
    w = dict(zip([r["tokenizer"] for r in CRAFTED], trilemma_weights(CRAFTED)))
    assert w["patch4-8bit"] == (0.0, 1.0, 1.0)  # raw size, lossless, discrete
    assert w["vq-f4"][0] == 1.0  # the most compact of the sweep
    assert w["ae-f4"][2] == 0.0 and 0 < w["ae-f4"][1] < 1
    # the AE is placed at its 900 effective bits, not at 32 bits x 256 floats
    assert w["ae-f4"][0] == pytest.approx(math.log2(24576 / 900) / math.log2(24576 / 512))
    assert plot_bits(CRAFTED[4]) == 900 and plot_bits(dict(CRAFTED[4], effective_bits_per_image=None)) == 8192
    assert trilemma_weights([dict(CRAFTED[0], psnr=None)]) == [None]


def test_markdown_table_marks_the_front():
    assert discrete_front(CRAFTED, "psnr") == [2, 1, 0]
    assert discrete_front(CRAFTED, "rfid") == [2, 1, 0]  # vq-f4-bad: more bits and worse rFID
    table = markdown_table(CRAFTED, front=[2])
    assert "| vq-f4 * |" in table and "| vq-f4-bad |" in table


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def saved_tokenizers(tmp_path, tiny_vq):
    dirs = []
    for preset in ("patch4-8bit", "patch4-4bit"):
        tok = registry.build("tokenizer", preset, image_size=32)
        dirs.append(checkpoint.save(tok, tmp_path / preset / "model", extra={"preset": preset}))
    dirs.append(checkpoint.save(tiny_vq, tmp_path / "my-vq"))  # no preset: named after its directory
    return dirs


def test_tradeoff_end_to_end(saved_tokenizers, tmp_path):
    torch.set_num_threads(1)
    rows = tradeoff([saved_tokenizers[0].parent, *saved_tokenizers[1:]], data="shapes", n=8, features=None,
                    lpips=False, progress=False)
    by_name = {r["tokenizer"]: r for r in rows}
    assert list(by_name) == ["patch4-8bit", "patch4-4bit", "my-vq"]
    hi, lo, vq = by_name["patch4-8bit"], by_name["patch4-4bit"], by_name["my-vq"]
    assert hi["psnr"] > lo["psnr"] > 25  # 8 bits per value is lossless on 8-bit images; 4 bits is not
    assert hi["bits_per_image"] == 64 * 48 * 8 and lo["bits_per_image"] == 64 * 48 * 4
    assert vq["bits_per_image"] == 64 * 4 and vq["discrete"] and vq["image_size"] == 32
    files = write_report(rows, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text().count("| my-vq") == 1
    _assert_png(files["psnr_plot"])


def test_tradeoff_feeds_every_tokenizer_the_same_images(saved_tokenizers):
    seen = []

    def record(tokenizer, images, **kwargs):
        seen.append(images)
        return evaluate_reconstruction(tokenizer, images, **kwargs)

    tradeoff(saved_tokenizers, n=4, features="none", lpips=False, progress=False, evaluate=record)
    assert len(seen) == 3 and all(torch.equal(s, seen[0]) for s in seen) and seen[0].shape == (4, 3, 32, 32)


def test_tradeoff_refuses_mixed_image_sizes(saved_tokenizers, tmp_path):
    big = checkpoint.save(registry.build("tokenizer", "patch4-8bit", image_size=48), tmp_path / "big")
    with pytest.raises(ValueError, match="different image sizes"):
        tradeoff([saved_tokenizers[0], big], n=2, features=None, lpips=False)
    with pytest.raises(ValueError, match="shapes"):
        tradeoff([saved_tokenizers[0]], data=str(tmp_path), n=2, features="domain", lpips=False)


def test_tradeoff_runs_convolutional_tokenizers_at_another_size(saved_tokenizers, tmp_path):
    promptable = checkpoint.save(registry.build("tokenizer", "promptable-tiny"), tmp_path / "prompt")
    rows = tradeoff(saved_tokenizers, n=2, size=64, features=None, lpips=False, progress=False)
    assert [r["image_size"] for r in rows] == [64, 64, 64]
    assert [r.get("trained") for r in rows] == ["at 32x32"] * 3 and rows[2]["native_image_size"] == 32
    assert rows[0]["tokens_per_image"] == 256 and rows[2]["tokens_per_image"] == 4 * 64  # the grid grew with the size
    assert rows[0]["psnr"] > 100  # raw 8-bit patches stay exact at any size (to float rounding)
    native = tradeoff(saved_tokenizers[:1], n=2, size=32, features=None, lpips=False, progress=False)
    assert "trained" not in native[0] and "native_image_size" not in native[0]
    with pytest.raises(checkpoint.CheckpointError, match=r"takes 32x32 images only .* not 64x64"):
        tradeoff([saved_tokenizers[0], promptable], n=2, size=64, features=None, lpips=False, progress=False)


def test_reconstruction_picture_shows_each_tokenizer_on_the_evaluated_images(saved_tokenizers, tmp_path, monkeypatch):
    rows = tradeoff(saved_tokenizers, n=3, features=None, lpips=False, progress=False)
    drawn = {}
    monkeypatch.setattr(tradeoff_module, "save_grid", lambda grid, path, captions, nrow, scale: drawn.update(
        grid=grid, captions=captions, nrow=nrow) or path)
    assert tradeoff_module.reconstruction_picture(rows, "shapes", tmp_path / "r.png", count=3) == tmp_path / "r.png"
    grid, captions = drawn["grid"].view(3, 4, 3, 32, 32), drawn["captions"]
    assert drawn["nrow"] == 4 and captions[:2] == ["original", "patch4-8bit: inf dB"]
    assert captions[2].startswith("patch4-4bit: ") and captions[3].startswith("my-vq: ") and captions[4] == "original"
    assert torch.equal(grid[:, 1], grid[:, 0]) and not torch.equal(grid[:, 2], grid[:, 0])  # lossless, then not
    images = load_images("shapes", 3, 32)[0]
    assert torch.equal(grid[:, 0], images)  # the images tradeoff evaluated


def test_split_all_evaluates_every_image_of_a_folder(saved_tokenizers, tmp_path):
    from PIL import Image

    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(30):  # a hash-based 5% hold-out of 30 images holds one or two of them
        Image.new("RGB", (32, 32), (8 * i, 100, 200)).save(folder / f"{i:02d}.png")
    seen = []

    def record(tok, images, **kw):
        seen.append(len(images))
        return evaluate_reconstruction(tok, images, **kw)

    counts = {}
    for split in ("test", "all"):
        tradeoff(saved_tokenizers[:1], data=str(folder), n=100, features="none", lpips=False, progress=False,
                 split=split, evaluate=record)
        counts[split] = seen[-1]
    assert counts["all"] == 30 and counts["test"] < 30
    with pytest.raises(ValueError, match="shapes is generated per split"):
        tradeoff(saved_tokenizers[:1], n=2, features="none", lpips=False, split="all")


def test_rfid_with_its_floor_only_above_the_feature_dimension_and_every_row_states_its_protocol(
        saved_tokenizers, tmp_path, monkeypatch):
    torch.manual_seed(0)
    small = DomainFeatures(DomainFeatures.Config(channels=(8,), dim=8))
    monkeypatch.setattr(tradeoff_module, "resolve_features", lambda *a, **k: small)
    seen = []

    def record(tokenizer, images, **kwargs):
        seen.append((images, kwargs.get("floor_images")))
        return evaluate_reconstruction(tokenizer, images, **kwargs)

    rows = tradeoff(saved_tokenizers[:2], n=12, features="domain", lpips=False, progress=False, evaluate=record)
    images, floor = seen[0]
    assert floor.shape == images.shape and not any(torch.equal(f, x) for f in floor for x in images)  # disjoint
    assert all(torch.equal(f, floor) for _, f in seen)  # one floor for every tokenizer
    assert rows[0]["rfid_floor"] == rows[1]["rfid_floor"] > 0  # one floor: the real images only
    assert abs(rows[0]["rfid"]) < 0.01 * rows[0]["rfid_floor"]  # lossless: far below the floor
    for row in rows:
        p = row["protocol"]
        assert (p["split"], p["images"], p["seed"]) == ("test", 12, 0) and "8-d" in p["features"]
        assert p["rfid"].startswith("measured") and "next 12 of the test split" in p["rfid_floor"]
    files = write_report(rows, tmp_path / "measured", settings={"data": "shapes", "n": 12})
    payload = json.loads(files["json"].read_text())
    assert payload["settings"]["images"] == 12 and payload["settings"]["rfid"].startswith("measured")
    md = files["markdown"].read_text()
    assert "- rfid_floor: FID between the 12 evaluated images" in md and "rFID floor (real vs real)" in md

    few = tradeoff(saved_tokenizers[:1], n=8, features="domain", lpips=False, progress=False)  # 8 images, 8-d features
    assert few[0]["rfid"] is None and few[0]["rfid_floor"] is None
    assert few[0]["protocol"]["rfid"].startswith("left out: 8 images for 8-d features")
    files = write_report(few, tmp_path / "left-out")
    assert "rFID: not computed (8 images for 8-d features" in files["markdown"].read_text()


def test_effective_bits_step_images_reach_every_evaluation_and_the_protocol(saved_tokenizers, tmp_path):
    seen = []

    def record(tok, images, **kw):
        seen.append(kw.get("bits_step_images"))
        return evaluate_reconstruction(tok, images, **kw)

    rows = tradeoff(saved_tokenizers[:2], n=6, features="none", lpips=False, progress=False, evaluate=record,
                    bits_step_images=3)
    assert seen == [3, 3]
    assert all("the first 3 evaluated images, the entropy counted on all 6" in r["protocol"]["effective_bits"]
               for r in rows)
    rows = tradeoff(saved_tokenizers[:1], n=6, features="none", lpips=False, progress=False, evaluate=record)
    assert seen[-1] is None and "every evaluated image" in rows[0]["protocol"]["effective_bits"]


def test_real_score_is_the_ceiling_the_mean_of_the_ceilings_or_the_floor():
    from trilemma.studies.report import real_score

    scores = {f"adherence_{a}_acc_ceiling": v for a, v in zip(("shape", "color", "size", "position"), (1.0, 0.5, 1.0, 0.5))}
    scores.update(fid_floor=3.0, kid_floor=0.01)
    assert real_score(scores, "adherence_mean") == 0.75 and real_score(scores, "adherence_color_acc") == 0.5
    assert real_score(scores, "fid") == 3.0 and real_score(scores, "kid_mean") == 0.01
    assert real_score(scores, "psnr") is None and real_score({}, "adherence_mean") is None
