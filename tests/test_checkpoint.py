import json

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.checkpoint import CheckpointError


def _assert_one_line(err: Exception, *needles: str) -> None:
    text = str(err)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


def test_round_trip_is_bit_exact(tmp_path, tiny_vq, images):
    tiny_vq.train()
    tiny_vq(images)  # k-means init and EMA buffers change state: they must survive too
    path = checkpoint.save(tiny_vq, tmp_path / "tok", state={"step": 7})
    loaded = checkpoint.load(path, kind="tokenizer")
    a, b = tiny_vq.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config == tiny_vq.config
    assert checkpoint.load_state(path)["step"] == 7
    tiny_vq.eval()
    assert torch.equal(tiny_vq.encode(images).ids, loaded.encode(images).ids)


def test_overwrite_is_atomic_when_the_write_fails(tmp_path, tiny_vq, monkeypatch):
    path = checkpoint.save(tiny_vq, tmp_path / "tok")
    before = (path / checkpoint.WEIGHTS_FILE).read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        checkpoint.save(tiny_vq, path)
    assert (path / checkpoint.WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left behind


def test_a_writer_killed_mid_save_is_recovered_on_resume(tmp_path, tiny_vq):
    path = checkpoint.save(tiny_vq, tmp_path / "model", state={"step": 3})
    before = (path / checkpoint.WEIGHTS_FILE).read_bytes()
    (tmp_path / ".model.tmp-dead1").mkdir()  # killed while writing the next checkpoint
    (tmp_path / ".model.tmp-dead1" / checkpoint.WEIGHTS_FILE).write_bytes(b"partial")
    path.rename(tmp_path / ".model.old-dead2")  # killed between the two renames of a swap
    assert checkpoint.load_state(path)["step"] == 3  # the previous checkpoint is put back
    assert (path / checkpoint.WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / ".model.tmp-dead3").mkdir()
    checkpoint.save(tiny_vq, path, state={"step": 4})  # a save sweeps stale temp dirs too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_truncated_weights_give_one_line_error(tmp_path, tiny_vq):
    path = checkpoint.save(tiny_vq, tmp_path / "tok")
    weights = path / checkpoint.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    _assert_one_line(err.value, str(weights), "truncated")


def test_bad_json_wrong_kind_newer_version_missing(tmp_path, tiny_vq):
    path = checkpoint.save(tiny_vq, tmp_path / "tok")
    cfg = path / checkpoint.CONFIG_FILE
    good = cfg.read_text()
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path, kind="generator")
    _assert_one_line(err.value, str(path), "tokenizer checkpoint, expected a generator")
    meta = json.loads(good)
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    cfg.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    _assert_one_line(err.value, str(cfg), "newer")
    cfg.write_text(good[:-20])
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    _assert_one_line(err.value, str(cfg), "corrupt JSON")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(tmp_path / "missing")
    _assert_one_line(err.value, "missing", "no such checkpoint")


def test_shape_mismatch_is_named(tmp_path, tiny_vq):
    path = checkpoint.save(tiny_vq, tmp_path / "tok")
    meta = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    meta["config"]["channels"] = 16
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    _assert_one_line(err.value, "has shape", "expects")


def test_a_convolutional_tokenizer_loads_at_another_image_size(tmp_path):
    tok = registry.build("tokenizer", "fsq-f4-shapes", channels=8)
    path = checkpoint.save(tok, tmp_path / "fsq")
    big = checkpoint.load(path, kind="tokenizer", image_size=64)
    assert big.image_size == 64 and big.native_image_size == 32 and big.spec.grid == (16, 16)
    for name, tensor in tok.state_dict().items():
        assert torch.equal(big.state_dict()[name], tensor), name
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    tokens = big.encode(images)
    assert tokens.ids.shape == (2, 256) and big.decode(tokens).shape == (2, 3, 64, 64)
    same = checkpoint.load(path, kind="tokenizer", image_size=32)  # its own size: as saved
    x = images[:, :, :32, :32]
    assert torch.equal(same.encode(x).ids, tok.eval().encode(x).ids)
    with pytest.raises(checkpoint.CheckpointError, match="not divisible"):
        checkpoint.load(path, kind="tokenizer", image_size=30)
