"""The command line, through ``trilemma.cli.main`` (and one real subprocess)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.tokens import Tokens

SUBCOMMANDS = ["list", "data", "train", "generate", "caption", "demo", "eval", "tokenize", "reconstruct", "import"]


def _png(path: Path, size: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def _assert_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG"


@pytest.fixture
def vq_dir(tmp_path, tiny_vq):
    return checkpoint.save(tiny_vq, tmp_path / "vq")


def test_help_in_a_subprocess_lists_the_subcommands():
    script = Path(sys.executable).parent / "trilemma"
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "trilemma", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in done.stdout or f"\n    {name}\n" in done.stdout, name


@pytest.mark.parametrize("what", ["tokenizers", "generators", "presets"])
def test_list_prints_registered_names_one_per_line(what, capsys):
    assert main(["list", what]) == 0
    expected = (registry.preset_names("tokenizer") + registry.preset_names("generator") if what == "presets"
                else registry.names(what[:-1]))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == expected and expected
    if what == "presets":  # each preset with its kind, model and description
        assert any(line.split()[1:3] == ["tokenizer", "vqvae:"] for line in lines)
        assert all(len(line.split()) > 3 for line in lines)


def test_version_module_entry_point_defaults_and_debug_after_the_subcommand(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "trilemma", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("trilemma ")
    with pytest.raises(SystemExit):
        main(["train", "tokenizer", "--help"])
    help_text = capsys.readouterr().out
    assert "(default: the preset's recipe, else 2000)" in " ".join(help_text.split()) and "--fp16" in help_text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--sample-steps" in help_text and "--device" in help_text and "\n  --steps" not in help_text
    with pytest.raises(checkpoint.CheckpointError):  # --debug after the subcommand: the traceback, not one line
        main(["tokenize", str(tmp_path / "missing.png"), "--tokenizer", str(tmp_path), "--debug"])


def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "tokenizer", "--preset", "vq-f4-shapes", "--steps", "0", "--out", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--steps" in err and "got 0" in err


def _saved_generator(tmp_path, tokenizer, preset):
    """An untrained generator saved at tmp_path/gen, recording ``tokenizer`` saved at tmp_path/tok."""
    from trilemma.data.text import TextTokenizer

    tok_dir = checkpoint.save(tokenizer, tmp_path / "tok")
    text = TextTokenizer.build(["a red circle", "a blue square"], max_length=6)
    torch.manual_seed(0)
    gen = registry.build("generator", preset, spec=tokenizer.spec, text=text)
    checkpoint.save(gen, tmp_path / "gen", extra={"tokenizer": {"path": str(tok_dir), "hash": checkpoint.content_hash(tok_dir)}})
    return text


def test_generate_cfg_scale_travels_to_the_sampler_checked_once(tmp_path, tiny_vq, monkeypatch):
    """CLI -> one SamplingConfig -> Pipeline -> generator.sample -> the guidance function."""
    from trilemma.generators import base, sampling

    _saved_generator(tmp_path, tiny_vq, "dalle-tiny")
    checks, scales = [], []
    real_check, real_combine = sampling.check_sampling, base.cfg_combine
    monkeypatch.setattr(sampling, "check_sampling", lambda cfg: (checks.append(cfg), real_check(cfg)))
    monkeypatch.setattr(base, "cfg_combine", lambda c, u, scale: (scales.append(scale), real_combine(c, u, scale))[1])
    out = tmp_path / "grid.png"
    args = ["generate", "a red circle", "--generator", str(tmp_path / "gen"), "--n", "3", "--batch-size", "2",
            "--cfg-scale", "2.5", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    _assert_png(out)
    assert len(checks) == 1 and checks[0].cfg_scale == 2.5
    assert scales and set(scales) == {2.5}
    each = tmp_path / "each"
    assert main([*args, "--out-dir", str(each)]) == 0
    records = [json.loads(p.read_text()) for p in sorted(each.glob("*.json"))]
    assert len(records) == 3 and len(list(each.glob("*.png"))) == 3
    assert [r["seed"] for r in records] == [1, 1, 3]  # chunks of 2 prompts: seed + chunk start
    assert records[0]["prompt"] == "a red circle" and records[0]["sampling"]["cfg_scale"] == 2.5
    assert main([*args, "--out-dir", str(each)]) == 1  # never over earlier images


def test_generate_edits_a_box_and_reranks(tmp_path, tiny_vq, capsys):
    from PIL import Image

    from trilemma.metrics.contrastive import ContrastiveModel

    text = _saved_generator(tmp_path, tiny_vq, "muse-tiny")
    scorer = checkpoint.save(ContrastiveModel(ContrastiveModel.Config(channels=(8, 8), image_dim=8, text_dim=8, text_depth=0,
                                                                      embed_dim=8), text=text).eval(), tmp_path / "scorer")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "init.png")
    each = tmp_path / "each"
    args = ["generate", "a blue square", "--generator", str(tmp_path / "gen"), "--n", "2", "--seed", "0", "--init",
            str(tmp_path / "init.png"), "--box", "0,0,.5,.5", "--rerank", "3", "--scorer", str(scorer),
            "--out", str(tmp_path / "grid.png"), "--out-dir", str(each)]
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in sorted(each.glob("*.json"))]
    assert len(records) == 2 and records[0]["box"] == "0,0,.5,.5" and records[0]["rerank"] == 3
    _assert_png(tmp_path / "grid.png")


def test_data_preview_writes_a_png(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "shapes", "--n", "4", "--out", str(out)]) == 0
    _assert_png(out)
    assert "4 images" in capsys.readouterr().out


def test_an_error_is_one_line_without_traceback(tmp_path, capsys):
    image = _png(tmp_path / "x.png", 32)
    assert main(["tokenize", str(image), "--tokenizer", "/nonexistent"]) != 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "/nonexistent" in err
    assert "Traceback" not in err
    with pytest.raises(Exception, match="nonexistent"):
        main(["--debug", "tokenize", str(image), "--tokenizer", "/nonexistent"])


def test_tokenize_and_reconstruct_two_images(tmp_path, vq_dir, capsys):
    small, big = _png(tmp_path / "small.png", 32), _png(tmp_path / "big.png", 48, seed=1)
    tokens_file = tmp_path / "tokens.safetensors"
    assert main(["tokenize", str(small), str(big), "--tokenizer", str(vq_dir), "--out", str(tokens_file)]) == 0
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "big.png" in notices[0] and "resized 48x48 -> 32x32" in notices[0]
    assert "tokens per image: 64" in out
    assert "bits per image: 256" in out  # 64 tokens x log2(16 codes)
    assert "codebook usage:" in out
    assert len(Tokens.load(tokens_file)) == 2

    recon = tmp_path / "recon.png"
    assert main(["reconstruct", str(small), str(big), "--tokenizer", str(vq_dir), "--out", str(recon)]) == 0
    out = capsys.readouterr().out
    assert f"{small}: PSNR" in out and f"{big}: PSNR" in out and "dB" in out
    _assert_png(recon)


def test_tokenize_and_reconstruct_at_another_size(tmp_path, vq_dir, capsys):
    big = _png(tmp_path / "big.png", 48, seed=1)
    tokens_file = tmp_path / "tokens.safetensors"
    assert main(["tokenize", str(big), "--tokenizer", str(vq_dir), "--size", "48", "--out", str(tokens_file)]) == 0
    out = capsys.readouterr().out
    assert "tokens per image: 144" in out and "notice:" not in out  # a 12x12 grid, the image as it is
    assert Tokens.load(tokens_file).meta["image_size"] == 48
    recon = tmp_path / "recon.png"
    assert main(["reconstruct", str(big), "--tokenizer", str(vq_dir), "--size", "48", "--out", str(recon)]) == 0
    assert Image.open(recon).height >= 48
    assert main(["reconstruct", str(big), "--tokenizer", str(vq_dir), "--size", "30", "--out", str(recon)]) == 1
    assert "not divisible" in capsys.readouterr().err


def test_eval_reconstruction_prints_the_metrics(tmp_path, vq_dir, capsys):
    torch.set_num_threads(1)
    out_dir = tmp_path / "eval"
    args = ["eval", "reconstruction", "--tokenizer", str(vq_dir), "--features", "none", "--n", "16",
            "--out", str(out_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for key in ("PSNR", "SSIM", "rFID", "bits per image", "codebook usage", "encode"):
        assert key in out
    assert "256" in out  # bits per image
    saved = json.loads((out_dir / "reconstruction.json").read_text())
    assert saved["metrics"]["tokenizer"] == "vq" and saved["settings"]["n"] == 16


def test_eval_tradeoff_writes_the_report(tmp_path, capsys):
    dirs = []
    for preset in ("patch4-8bit", "patch4-4bit"):
        tok = registry.build("tokenizer", preset, image_size=32)
        dirs.append(str(checkpoint.save(tok, tmp_path / preset, extra={"preset": preset})))
    out_dir = tmp_path / "report"
    assert main(["eval", "tradeoff", "--tokenizers", *dirs, "--n", "4", "--features", "none", "--no-lpips",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| patch4-8bit" in out and "| patch4-4bit" in out
    for name in ("report.json", "report.md", "psnr_vs_bits.png", "trilemma.png", "reconstructions.png"):
        assert (out_dir / name).is_file(), name
    assert "![reconstructions](reconstructions.png)" in (out_dir / "report.md").read_text()
    assert Image.open(out_dir / "reconstructions.png").width == 3 * 4 * 32 + 4 * 4  # original + 2 tokenizers, x4


def test_eval_generation_error_names_the_missing_generator(tmp_path, capsys):
    assert main(["eval", "generation", "--generator", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1


def _stub_generation(monkeypatch, bench, evaluate):
    from trilemma import pipeline
    from trilemma.cli import evaluate as command

    fake_pipe = types.SimpleNamespace(tokenizer=types.SimpleNamespace(image_size=32))
    fake_pipe.to = lambda device: fake_pipe
    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(lambda cls, g, t=None, precision="fp32": fake_pipe))
    monkeypatch.setattr(command, "benchmark", bench)
    monkeypatch.setattr(command, "evaluate_generation", evaluate)


def _two_categories(n: int, features=None, real=torch.rand):
    """A stand-in benchmark: unseen (the headline) and novel prompts, with the protocol ``benchmark`` states."""
    from trilemma.studies.generation import Benchmark, Category

    roles = {"unseen": ("val", "test", n), "novel": ("novel", "novel", 2)}
    protocol = {"data": "shapes", "image_size": 32, "seed": 3, "headline": "unseen", "features": "domain (stub, 3-d)",
                "adherence": "the shapes probe (stub)", "floor": "real vs real", "ceiling": "the probe on real images",
                "categories": {k: {"prompts": {"split": p, "count": m}, "floor": {"split": p, "images": m},
                                   "reference": {"split": r, "images": n},
                                   "prompts_in_train": {"compositions": 0, "measured": m}}
                               for k, (p, r, m) in roles.items()}}
    cats = {k: Category([f"{k} {i}" for i in range(m)], real(n, 3, 32, 32), real(m, 3, 32, 32)) for k, (_, _, m) in roles.items()}
    return Benchmark(cats, features, protocol=protocol)


def _scored(fid: float, floor: float) -> dict:
    return {"fid": fid, "fid_floor": floor, "adherence_object_acc": 0.75, "adherence_object_acc_ceiling": 0.9}


def test_eval_generation_builds_one_checked_sampling_config(tmp_path, monkeypatch, capsys):
    """The command's plumbing, with the pipeline, the benchmark and the evaluation replaced by stand-ins."""
    from trilemma.generators.sampling import SamplingConfig

    seen = {}

    def bench(data, n, size, seed, features, cache_dir, probe_dir, split="test", diagnostic_n=None):
        seen.update(data=data, n=n, size=size, seed=seed, probe_dir=probe_dir, diagnostic_n=diagnostic_n)
        return _two_categories(n)

    def evaluate(pipe, benchmark, sampling, batch_size):
        seen["sampling"] = sampling
        cats = {"unseen": _scored(12.5, 1.5), "novel": {**_scored(20.0, 4.0), "by_novel_pair": {
            "red triangle": {"images": 1, "adherence_object_acc": 0.0, "adherence_object_acc_ceiling": 1.0}}}}
        return {**cats["unseen"], "categories": cats, "protocol": {**benchmark.protocol, "sampling_seed": sampling.seed}}

    _stub_generation(monkeypatch, bench, evaluate)
    args = ["eval", "generation", "--generator", "g", "--n", "6", "--seed", "3", "--top-k", "5", "--out", str(tmp_path),
            "--diagnostic-n", "2"]
    assert main(args) == 0
    assert seen["n"] == 6 and seen["seed"] == 3 and seen["size"] == 32 and seen["probe_dir"] == tmp_path / "probe"
    assert seen["diagnostic_n"] == 2 and seen["sampling"] == SamplingConfig(top_k=5, seed=3)
    out = capsys.readouterr().out
    # The protocol first (a row per category: the split and size of each role, the measured overlap), then a table
    # per category: each score beside what real images score (the floor, or the probe's ceiling).
    assert "| unseen (headline) | 6 val | 6 test | 0 of 6 compositions |" in out and "| novel | 2 novel | 6 novel |" in out
    assert "sampling seed 3" in out
    lines = out.splitlines()
    assert lines.index("## unseen (headline)") < lines.index("## novel")
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    unseen, novel = ({cells(line)[0]: cells(line)[1:] for line in part if line.startswith("| ")}
                     for part in (lines[lines.index("## unseen (headline)"):lines.index("## novel")],
                                  lines[lines.index("## novel"):]))
    assert unseen["fid"] == ["12.5", "1.5"] and unseen["adherence_object_acc"] == ["0.75", "0.9"]
    assert novel["fid"] == ["20", "4"] and novel["red triangle: adherence_object_acc"] == ["0", "1"]
    assert (tmp_path / "generation.md").read_text().strip() == out[: out.index("wrote ")].strip()
    saved = json.loads((tmp_path / "generation.json").read_text())
    (run,) = saved["runs"]
    assert run["metrics"]["fid"] == 12.5 and run["sampling"]["cfg_scale"] == 1.0 and run["sampling"]["top_k"] == 5
    assert run["metrics"]["categories"]["novel"]["fid"] == 20.0 and "protocol" not in run["metrics"]
    assert saved["protocol"]["categories"]["novel"]["prompts"] == {"split": "novel", "count": 2}
    assert saved["protocol"]["sampling_seed"] == 3
    assert main([*args, "--cfg-scale", "-1"]) == 1
    assert capsys.readouterr().err.strip() == "error: --cfg-scale must be >= 0 (1 = no guidance), got -1.0"
    assert main([*args, "--split", "novel", "--data", str(tmp_path)]) == 1  # a folder has no novel split
    assert "--split novel" in capsys.readouterr().err


def test_eval_generation_sweeps_guidance_scales_side_by_side(tmp_path, monkeypatch, capsys):
    """Several --cfg-scale values: one evaluation each on the same prompts, the real sets' features
    extracted once, one table per category, one run per scale in generation.json."""
    from trilemma.metrics.features import FeatureExtractor

    class MeanColour(FeatureExtractor):
        dim = 3

        def forward(self, images):
            return images.mean(dim=(2, 3))

    calls = []

    def bench(data, n, size, seed, features, cache_dir, probe_dir, split="test", diagnostic_n=None):
        return _two_categories(n, MeanColour())

    def evaluate(pipe, benchmark, sampling, batch_size):
        calls.append((benchmark.categories, sampling))
        cats = {"unseen": {"fid": 10.0 / sampling.cfg_scale, "fid_floor": 0.5}, "novel": {"fid": 7.0, "fid_floor": 1.0}}
        return {**cats["unseen"], "categories": cats, "protocol": benchmark.protocol}

    _stub_generation(monkeypatch, bench, evaluate)
    args = ["eval", "generation", "--generator", "g", "--n", "5", "--cfg-scale", "1", "4", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    assert [c[1].cfg_scale for c in calls] == [1.0, 4.0]  # each scale once, in the order given
    first = calls[0][0]
    assert first["unseen"].reference.shape == (5, 3) and first["novel"].floor.shape == (2, 3)  # features, extracted once
    assert all(torch.equal(c[0][k].reference, first[k].reference) and torch.equal(c[0][k].floor, first[k].floor)
               for c in calls for k in first)
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if "cfg 1" in line]
    assert len(headers) == 2 and all("cfg 4" in h and "real images" in h for h in headers)  # a table per category
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| fid ")]
    assert rows == [["fid", "10", "2.5", "0.5"], ["fid", "7", "7", "1"]]
    runs = json.loads((tmp_path / "generation.json").read_text())["runs"]
    assert [r["sampling"]["cfg_scale"] for r in runs] == [1.0, 4.0] and runs[1]["metrics"]["fid"] == 2.5


def test_train_takes_the_presets_recipe_where_no_flag_is_given(tmp_path, monkeypatch, capsys):
    """--steps / --batch-size / --lr default to what the preset was measured with; a flag wins, and a
    preset without a recipe trains with the command's defaults."""
    from trilemma.training import tokenizer as tokenizer_training

    seen = []
    monkeypatch.setattr(tokenizer_training, "train_tokenizer",
                        lambda preset, data, out, cfg, *a, **k: seen.append(cfg) or {"checkpoint": out, "step": 0, "eval": {}})
    recipe = registry.get_preset("tokenizer", "promptable-shapes").recipe
    assert recipe["lr"] != tokenizer_training.DEFAULTS.lr  # else this test could not tell the two apart
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", "tokenizer", "--preset", "promptable-shapes", *out]) == 0
    assert (seen[-1].lr, seen[-1].steps) == (recipe["lr"], recipe["steps"])
    assert f"--lr {recipe['lr']:g}" in capsys.readouterr().out  # says where the settings came from
    assert main(["train", "tokenizer", "--preset", "promptable-shapes", "--lr", "3e-4", *out]) == 0
    assert (seen[-1].lr, seen[-1].steps) == (3e-4, recipe["steps"])
    assert not registry.get_preset("tokenizer", "fsq-f4-shapes").recipe
    assert main(["train", "tokenizer", "--preset", "fsq-f4-shapes", *out]) == 0
    defaults = tokenizer_training.DEFAULTS
    assert (seen[-1].lr, seen[-1].steps, seen[-1].batch_size) == (defaults.lr, defaults.steps, defaults.batch_size)


def test_reconstruction_table_writes_a_reason_shared_by_every_column_once():
    from trilemma.cli.evaluate import metric_lines

    why = {"rfid": "left out: 11 images for 2048-d features"}
    rows = [{"tokenizer": f"tok k={k}", "discrete": True, "tokens_per_image": k, "bits_per_image": 9 * k, "psnr": 11.0 + k,
             "ssim": 0.2, "vocab_size": 512, "codebook_usage": k / 32, "protocol": why} for k in (1, 32)]
    lines = {line.split("  ")[0]: line for line in metric_lines(*rows)}
    assert lines["rFID"].count("left out") == 1 and lines["LPIPS"].count("no backbone weights") == 1
    assert "tok k=1" in lines["tokenizer"] and "tok k=32" in lines["tokenizer"]  # what differs keeps a column each
    psnr = lines["PSNR"]
    assert psnr.index("43.00") == lines["tokenizer"].index("tok k=32")  # the columns stay aligned
    assert len(lines["rFID"]) < 2 * len(lines["tokenizer"])
