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
from trilemma.data import load_dataset
from trilemma.tokens import Tokens

SUBCOMMANDS = ["list", "data", "train", "generate", "demo", "eval", "tokenize", "reconstruct", "import"]


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


@pytest.fixture
def reconstruction_api(monkeypatch):
    """The real ``trilemma.eval.reconstruction`` when present, else the stand-in of test_tradeoff."""
    try:
        import trilemma.eval.reconstruction  # noqa: F401
    except ModuleNotFoundError:
        sys.path.insert(0, str(Path(__file__).parent))
        from test_tradeoff import _standin_evaluate

        module = types.ModuleType("trilemma.eval.reconstruction")
        module.evaluate_reconstruction = _standin_evaluate
        monkeypatch.setitem(sys.modules, "trilemma.eval.reconstruction", module)


def test_help_in_a_subprocess_lists_the_subcommands():
    script = Path(sys.executable).parent / "trilemma"
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "trilemma.cli", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in done.stdout or f"\n    {name}\n" in done.stdout, name


@pytest.mark.parametrize("what", ["tokenizers", "generators", "presets"])
def test_list_prints_registered_names_one_per_line(what, capsys):
    assert main(["list", what]) == 0
    expected = (registry.preset_names("tokenizer") + registry.preset_names("generator") if what == "presets"
                else registry.names(what[:-1]))
    assert capsys.readouterr().out.splitlines() == expected
    assert expected


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


def test_eval_reconstruction_prints_the_metrics(tmp_path, vq_dir, reconstruction_api, capsys):
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


def test_eval_tradeoff_writes_the_report(tmp_path, reconstruction_api, capsys):
    dirs = []
    for preset in ("patch4-8bit", "patch4-4bit"):
        tok = registry.build("tokenizer", preset, image_size=32)
        dirs.append(str(checkpoint.save(tok, tmp_path / preset, extra={"preset": preset})))
    out_dir = tmp_path / "report"
    assert main(["eval", "tradeoff", "--tokenizers", *dirs, "--n", "4", "--features", "none", "--no-lpips",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| patch4-8bit" in out and "| patch4-4bit" in out
    for name in ("report.json", "report.md", "psnr_vs_bits.png", "trilemma.png"):
        assert (out_dir / name).is_file(), name


def test_eval_generation_error_names_the_missing_generator(tmp_path, capsys):
    assert main(["eval", "generation", "--generator", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1


def test_eval_generation_passes_held_out_prompts_reference_and_floor(tmp_path, monkeypatch, capsys):
    """The command's plumbing, with the pipeline, probe and evaluation replaced by stand-ins."""
    from trilemma import pipeline
    from trilemma.eval import probe as probe_module

    fake_pipe = types.SimpleNamespace(tokenizer=types.SimpleNamespace(image_size=32),
                                      generator=types.SimpleNamespace(sampling_config=lambda **kw: kw))
    fake_probe = types.SimpleNamespace(features="domain-features")
    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(lambda cls, g, t=None: fake_pipe))
    monkeypatch.setattr(probe_module, "load_or_train_probe", lambda cache, size, seed: fake_probe)
    seen = {}

    def evaluate_generation(pipe, prompts, reference, floor, features, **kw):
        seen.update(prompts=prompts, reference=reference, floor=floor, features=features, **kw)
        return {"fid": 12.5, "fid_floor": 1.5, "adherence_object": 0.75}

    module = types.ModuleType("trilemma.eval.generation")
    module.evaluate_generation = evaluate_generation
    monkeypatch.setitem(sys.modules, "trilemma.eval.generation", module)

    args = ["eval", "generation", "--generator", "g", "--n", "6", "--seed", "3", "--top-k", "5", "--out", str(tmp_path)]
    assert main(args) == 0
    assert len(seen["prompts"]) == 6 and seen["reference"].shape == seen["floor"].shape == (6, 3, 32, 32)
    assert not torch.equal(seen["reference"], seen["floor"])  # the floor is other real images
    # The prompts are the floor images' captions, so a perfect generator would score the floor.
    val = load_dataset("shapes", split="val", size=32, seed=3)
    assert seen["prompts"] == [val[i]["caption"] for i in range(6)]
    assert torch.equal(seen["floor"][0], val[0]["image"])
    assert seen["features"] == "domain-features" and seen["probe"] is fake_probe
    assert len(seen["attributes"]) == 6 and seen["sampling"]["top_k"] == 5 and seen["sampling"]["seed"] == 3
    out = capsys.readouterr().out
    assert "fid" in out and "real vs real: 1.5" in out
    (run,) = json.loads((tmp_path / "generation.json").read_text())["runs"]
    assert run["metrics"]["fid"] == 12.5 and run["sampling"]["cfg_scale"] == 1.0


def test_eval_generation_sweeps_guidance_scales_side_by_side(tmp_path, monkeypatch, capsys):
    """Several --cfg-scale values: one evaluation each on the same prompts, the real sets' features
    extracted once, one table, one run per scale in generation.json."""
    from trilemma import pipeline
    from trilemma.eval import probe as probe_module
    from trilemma.eval.features import FeatureExtractor

    class MeanColour(FeatureExtractor):
        dim = 3

        def forward(self, images):
            return images.mean(dim=(2, 3))

    fake_pipe = types.SimpleNamespace(tokenizer=types.SimpleNamespace(image_size=32),
                                      generator=types.SimpleNamespace(sampling_config=lambda **kw: kw))
    monkeypatch.setattr(pipeline.Pipeline, "load", classmethod(lambda cls, g, t=None: fake_pipe))
    monkeypatch.setattr(probe_module, "load_or_train_probe",
                        lambda cache, size, seed: types.SimpleNamespace(features=MeanColour()))
    calls = []

    def evaluate_generation(pipe, prompts, reference, floor, features, sampling, **kw):
        calls.append((reference, floor, sampling))
        return {"fid": 10.0 / sampling["cfg_scale"], "fid_floor": 0.5}

    module = types.ModuleType("trilemma.eval.generation")
    module.evaluate_generation = evaluate_generation
    monkeypatch.setitem(sys.modules, "trilemma.eval.generation", module)

    args = ["eval", "generation", "--generator", "g", "--n", "5", "--cfg-scale", "1", "4", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    assert [c[2]["cfg_scale"] for c in calls] == [1.0, 4.0]  # each scale once, in the order given
    reference, floor, _ = calls[0]
    assert reference.shape == floor.shape == (5, 3)  # features, not images: extracted once for all scales
    assert all(torch.equal(c[0], reference) and torch.equal(c[1], floor) for c in calls)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "cfg 1" in line)
    assert "cfg 4" in header and "real vs real" in header
    assert any(line.split()[:4] == ["fid", "10", "2.5", "0.5"] for line in out.splitlines())
    runs = json.loads((tmp_path / "generation.json").read_text())["runs"]
    assert [r["sampling"]["cfg_scale"] for r in runs] == [1.0, 4.0] and runs[1]["metrics"]["fid"] == 2.5
