"""report.html is one self-contained page: tables and images render in a real headless browser."""

import base64
import io
import shutil
import subprocess

import numpy as np
import pytest
import torch

from trilemma.studies.html import markdown_to_html, write_html
from trilemma.images import save_grid

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _report(tmp_path):
    torch.manual_seed(0)
    save_grid(torch.rand(4, 3, 32, 32) * 2 - 1, tmp_path / "grid.png", captions=["a", "b", "c", "d"])
    md = tmp_path / "report.md"
    md.write_text("# My report\n\n| metric | value |\n|---|---|\n| PSNR | 36.2 |\n\n![grid](grid.png)\n")
    return write_html(md)


def test_the_page_embeds_every_image_and_renders_tables(tmp_path):
    page = _report(tmp_path).read_text()
    assert "<table>" in page and "<td>36.2</td>" in page and "<title>My report</title>" in page
    assert 'src="data:image/png;base64,' in page and "grid.png" not in page  # no file beside it is needed


def test_a_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="lost.png"):
        markdown_to_html("![x](lost.png)", tmp_path)


def test_the_page_renders_in_a_headless_browser(tmp_path):
    from PIL import Image

    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no headless browser: install Debian's chromium (apt-get install chromium) to run this check")
    page = _report(tmp_path)
    (tmp_path / "grid.png").unlink()  # the browser must find the image inside the page
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--virtual-time-budget=3000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<td>36.2</td>" in dom.stdout and "data:image/png;base64," in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=800,600", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = torch.from_numpy(np.array(Image.open(shot).convert("L"))).float()
    # The grid's random pixels make the page far from blank: many grey levels, not just text on white.
    assert pixels.unique().numel() > 64
    src = dom.stdout.split("data:image/png;base64,")[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(src))).size[0] > 32
