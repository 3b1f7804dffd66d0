"""Image I/O: exact uint8 round trips, mode conversion, clear errors, readable captioned grids."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from trilemma.images import (ImageReadError, load_image, save_grid, save_image, side_by_side,
                             to_uint8)


def test_uint8_round_trip_is_exact():
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(values.float() / 127.5 - 1), values)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped


def test_save_load_round_trip(tmp_path):
    image = torch.randint(0, 256, (3, 12, 20)).float() / 127.5 - 1
    path = save_image(image, tmp_path / "out" / "x.png")
    loaded = load_image(path)
    assert loaded.shape == (3, 12, 20) and loaded.dtype == torch.float32
    assert torch.equal(to_uint8(loaded), to_uint8(image))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temp file left
    with pytest.raises(ValueError, match="format"):
        save_image(image, tmp_path / "x.unknown")


def test_load_resizes_with_a_notice(tmp_path):
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    with pytest.warns(UserWarning, match=r"40x30 -> 16x16"):
        image = load_image(tmp_path / "wide.png", size=16)
    assert image.shape == (3, 16, 16)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "exact.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notice when nothing changes
        assert load_image(tmp_path / "exact.png", size=16).shape == (3, 16, 16)


def test_modes_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 100, dtype=np.uint8)).save(tmp_path / "l.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tiff")  # pure red ink
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    rgba.save(tmp_path / "clear.png")
    gray = to_uint8(load_image(tmp_path / "l.png"))
    assert gray.shape == (3, 4, 4) and (gray == 100).all()
    assert to_uint8(load_image(tmp_path / "cmyk.tiff"))[:, 0, 0].tolist() == [255, 0, 0]
    assert (to_uint8(load_image(tmp_path / "deep.png")) == 255).all()  # 16-bit white is white
    assert (to_uint8(load_image(tmp_path / "clear.png")) == 0).all()  # transparent -> black


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ghost.png"):
        load_image(tmp_path / "ghost.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    assert issubclass(ImageReadError, OSError)


def test_grid_size_matches_layout(tmp_path):
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    raw = Image.open(save_grid(images, tmp_path / "raw.png", nrow=3, scale=1, pad=2))
    assert raw.size == (3 * 32 + 4 * 2, 2 + 2 * (32 + 2))
    auto = Image.open(save_grid(images, tmp_path / "auto.png", nrow=3))  # cells >= 128 px
    assert auto.size == (3 * 128 + 4 * 4, 4 + 2 * (128 + 4))
    cell = np.asarray(auto)[4:132, 4:132]
    assert (cell[::4, ::4] == cell[1::4, 1::4]).all()  # NEAREST upscale: 4x4 blocks
    assert (cell[::4, ::4] == to_uint8(images[0]).permute(1, 2, 0).numpy()).all()


def test_captioned_grid_is_taller_and_draws_text(tmp_path):
    images = -torch.ones(4, 3, 16, 16)
    captions = ["a large red circle at the top left and a small blue square at the bottom",
                "x", "", "averyveryveryverylongwordwithoutanyspacesatallthatmustbesplit"]
    plain = Image.open(save_grid(images, tmp_path / "plain.png"))
    out = Image.open(save_grid(images, tmp_path / "cap.png", captions=captions, title="demo"))
    assert out.size[0] == plain.size[0] == 2 * 128 + 3 * 4
    assert out.size[1] > plain.size[1] + 3 * 10  # several wrapped lines of text
    dark = (np.asarray(out.convert("L")) < 128).sum()
    assert dark > 4 * 128 * 128 + 200  # the black cells, plus dark text on the white page
    with pytest.raises(ValueError, match="3 captions for 4 images"):
        save_grid(images, tmp_path / "bad.png", captions=captions[:3])


def test_side_by_side():
    a, b = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    pair = side_by_side(a, b)
    assert pair.shape == (2, 3, 8, 16) and (pair[..., :8] == 0).all() and (pair[..., 8:] == 1).all()
    with pytest.raises(ValueError, match="equal shapes"):
        side_by_side(a, torch.zeros(2, 3, 8, 9))
