import pytest
import torch
from safetensors.torch import save_file

from trilemma.tokens import Prompt, Tokens, TokenSpec


def test_spec_validates_and_round_trips():
    spec = TokenSpec("discrete", 64, vocab_size=256, grid=(8, 8), levels=2)
    assert spec.bits_per_token == 16
    assert TokenSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="vocab_size"):
        TokenSpec("discrete", 64)
    with pytest.raises(ValueError, match="latent_dim"):
        TokenSpec("continuous", 64)
    with pytest.raises(ValueError, match="kind"):
        TokenSpec("analog", 64, vocab_size=2)
    assert TokenSpec("continuous", 4, latent_dim=3).bits_per_token is None


def test_a_spec_saved_with_its_old_field_name_loads_as_ordered():
    old = {"kind": "discrete", "max_tokens": 32, "vocab_size": 512, "grid": None, "levels": 1, "sparse": True}
    assert TokenSpec.from_dict(old) == TokenSpec("discrete", 32, vocab_size=512, ordered=True)
    assert TokenSpec.from_dict({**old, "sparse": False}).ordered is False


def test_tokens_slice_cat_and_shape_checks():
    ids = torch.arange(24).reshape(4, 6)
    mask = ids % 2 == 0
    t = Tokens(ids=ids, mask=mask, prompt=Prompt(budget=3, boxes=torch.rand(4, 1, 4)))
    assert t.batch_size == 4 and t.num_tokens == 6 and len(t) == 4
    assert t[1].ids.tolist() == [ids[1].tolist()]
    assert t[-1].ids.tolist() == [ids[-1].tolist()]
    back = Tokens.cat([t[:2], t[2:]])
    assert torch.equal(back.ids, ids) and torch.equal(back.mask, mask)
    assert torch.equal(back.prompt.boxes, t.prompt.boxes) and back.prompt.budget == 3
    assert t.tokens_per_image().tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="latents"):
        Tokens(ids=ids, latents=torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="ids or latents"):
        Tokens()
    with pytest.raises(ValueError, match="set in some parts"):
        Tokens.cat([Tokens(ids=ids), Tokens(ids=ids, mask=mask)])


def test_tokens_save_load_bit_exact(tmp_path):
    spec = TokenSpec("continuous", 6, latent_dim=3)
    t = Tokens(latents=torch.randn(2, 6, 3), mask=torch.ones(2, 6, dtype=torch.bool),
               prompt=Prompt(budget=5, points=torch.rand(2, 2, 2), point_labels=torch.ones(2, 2, dtype=torch.long)),
               meta={"image_size": 32})
    path = tmp_path / "t.safetensors"
    t.save(path, spec=spec)
    u = Tokens.load(path)
    assert torch.equal(u.latents, t.latents) and torch.equal(u.mask, t.mask)
    assert torch.equal(u.prompt.points, t.prompt.points) and u.prompt.budget == 5 and u.prompt.boxes is None
    assert u.meta == {"image_size": 32}
    assert Tokens.load_spec(path) == spec


def test_tokens_files_with_the_retired_positions_tensor_still_load(tmp_path):
    # Files written before Tokens.positions was removed carry a "positions" tensor: it is ignored.
    ids, mask = torch.arange(6).reshape(2, 3), torch.tensor([[True, True, False], [True, False, False]])
    path = tmp_path / "old.safetensors"
    save_file({"ids": ids, "positions": ids.clone(), "mask": mask}, str(path), metadata={"meta": "{}"})
    t = Tokens.load(path)
    assert torch.equal(t.ids, ids) and torch.equal(t.mask, mask) and not hasattr(t, "positions")
    assert t.tokens_per_image().tolist() == [2, 1]


def test_tokens_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Tokens.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        Tokens.load(bad)
