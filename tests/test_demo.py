"""The main job end to end, in its quick form: train, generate, evaluate, report."""

import json
import subprocess
import sys

import pytest

from trilemma.data.text import words


@pytest.mark.slow
def test_quick_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "trilemma.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    for needle in ("Reconstruction", "Generation", "dalle", "parti", "fid_floor", "psnr"):
        assert needle in report, needle
    results = json.loads((out / "results.json").read_text())
    assert results["reconstruction"]["psnr"] > 10
    for kind in ("dalle", "parti"):
        assert (out / f"{kind}_samples.png").is_file()
        gen = results["generation"][kind]
        assert gen["fid"] >= 0 and 0 <= gen["adherence_object_acc"] <= 1
    assert "report:" in done.stdout
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "Reranking" in page
    assert (out / "editing.png").is_file()
    for kind in ("dalle", "parti"):  # an edit keeps what lies outside its box far better than what it redraws
        edit = results["editing"][kind]
        assert edit["psnr_outside"] > edit["psnr_inside"] + 3, edit
    rerank = results["rerank"]
    assert rerank["n"] == 8 and rerank["score_reranked"] >= rerank["score_plain"]
    # The text length defaults to the longest training caption + eos (no never-trained positions).
    (captions_file,) = (out / "token_cache").glob("tokens-*.json")
    longest = max(len(words(c)) for c in json.loads(captions_file.read_text()))
    for kind in ("dalle", "parti"):
        assert json.loads((out / kind / "text.json").read_text())["max_length"] == longest + 1
