"""The promptable tokenizer: budgets give exactly k ordered tokens, every prefix decodes, prompts
travel with the tokens (also through a file), bad prompts are one clear error, and --budget auto
picks the fewest tokens that reach the target."""

import math
import shutil

import pytest
import torch
from PIL import Image

from conftest import spy_prompts
from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.generators.sampling import SamplingConfig
from trilemma.tokens import Prompt, Tokens

BOX = torch.tensor([[[0.1, 0.2, 0.5, 0.6]]])


@pytest.fixture
def tok():
    torch.manual_seed(0)
    return registry.build("tokenizer", "promptable-tiny").eval()


def test_a_budget_gives_exactly_k_ids_in_the_vocabulary_and_every_prefix_decodes(tok, images):
    k_max, vocab = tok.spec.max_tokens, tok.spec.vocab_size
    full = tok.encode(images)
    assert full.ids.shape == (4, k_max) and full.prompt.budget == k_max
    for k in range(1, k_max + 1):
        tokens = tok.encode(images, Prompt(budget=k))
        assert tokens.ids.shape == (4, k) and 0 <= tokens.ids.min() and tokens.ids.max() < vocab
        assert torch.equal(tokens.ids, full.ids[:, :k])  # ordered: a budget is a prefix
        recon = tok.decode(tokens)
        assert recon.shape == images.shape and torch.isfinite(recon).all()


def test_the_prompt_steers_the_tokens_and_survives_a_file_round_trip(tok, images, tmp_path):
    prompt = Prompt(budget=3, boxes=BOX, points=torch.tensor([[[0.3, 0.4]]]))
    tokens = tok.encode(images, prompt)
    unprompted = Tokens(ids=tokens.ids, prompt=Prompt(budget=3))
    assert not torch.allclose(tok.decode(tokens), tok.decode(unprompted))  # the decoder reads the prompt
    tokens.save(tmp_path / "t.safetensors", spec=tok.spec)
    loaded = Tokens.load(tmp_path / "t.safetensors")
    assert loaded.prompt.budget == 3 and torch.equal(loaded.prompt.boxes, BOX.expand(4, 1, 4))  # kept per image
    assert torch.equal(tok.decode(loaded), tok.decode(tokens))  # decode needs no second argument


@pytest.mark.parametrize("prompt,match", [
    (Prompt(budget=0), "budget"), (Prompt(budget=99), "budget"),
    (Prompt(boxes=torch.tensor([[[0.1, 0.1, 1.5, 0.5]]])), r"\[0, 1\]"),
    (Prompt(boxes=torch.tensor([[[0.6, 0.1, 0.2, 0.5]]])), "x0 <= x1"),
    (Prompt(points=torch.tensor([[[0.1, 0.2, 0.3]]])), "points must be"),
])
def test_bad_prompts_are_clear_errors(tok, images, prompt, match):
    with pytest.raises(ValueError, match=match):
        tok.encode(images, prompt)


def test_a_prompt_to_a_tokenizer_that_takes_none_is_refused(tiny_vq, images):
    with pytest.raises(ValueError, match="takes no prompt"):
        tiny_vq.encode(images, Prompt(budget=4))


def test_auto_budget_is_the_smallest_k_reaching_the_target(tok, images):
    target = 5.0
    tokens = tok.encode_to_quality(images, target)
    chosen = tokens.tokens_per_image()
    full = tok.encode(images)
    for i, k in enumerate(chosen.tolist()):
        def psnr_at(j):
            recon = tok.decode(Tokens(ids=full.ids[i : i + 1, :j], prompt=full.prompt.index(slice(i, i + 1)))).clamp(-1, 1)
            return (10 * torch.log10(4 / (recon - images[i : i + 1]).pow(2).mean())).item()
        reached = [j for j in range(1, tok.spec.max_tokens + 1) if psnr_at(j) >= target]
        assert k == (reached[0] if reached else tok.spec.max_tokens)
    assert tok.decode(tokens).shape == images.shape  # per-image budgets decode in one call
    boxed = tok.encode_to_quality(images, target, Prompt(boxes=BOX))  # one box for every image
    assert boxed.prompt.boxes.shape == (4, 1, 4) and tok.decode(boxed).shape == images.shape


def test_training_weights_errors_inside_a_prompted_box_and_samples_every_budget(images):
    from trilemma.tokenizers.promptable import random_prompt
    from trilemma.tokenizers.prompts import box_mask

    torch.manual_seed(0)
    tok = registry.build("tokenizer", "promptable-tiny", region_weight=3.0).train()
    out = tok(images, Prompt(budget=8, boxes=BOX))
    err = (out.recon - images).pow(2).mean(1, keepdim=True)
    inside = box_mask(Prompt(boxes=BOX), 4, 32, images.device)
    assert 0 < inside.mean() < 1
    # The extra term is region_weight x the error inside the box, over the mean of every pixel.
    assert out.losses["region"].item() == pytest.approx(3.0 * (err * inside).mean().item(), rel=1e-4)
    assert "region" not in tok(images, Prompt(budget=8)).losses  # no box, no extra weight
    budgets = [random_prompt(images[:2], tok.config).budget for _ in range(400)]
    assert set(budgets) == set(range(1, 9))  # uniform over 1..K: every prefix is trained
    assert 0.7 < sum(k == 8 for k in budgets) / len(budgets) < 0.86  # full_budget_prob 0.75: 0.75 + 0.25 / 8 at K
    plain = [random_prompt(images[:2], registry.build("tokenizer", "promptable-tiny", full_budget_prob=0.0).config).budget
             for _ in range(400)]
    assert sum(k == 8 for k in plain) / len(plain) < 0.25  # 1 / 8 at K without it
    log_config = registry.build("tokenizer", "promptable-tiny", budget_sampling="log", full_budget_prob=0.0).config
    log = [random_prompt(images[:2], log_config).budget for _ in range(400)]
    assert sum(log) / len(log) < sum(plain) / len(plain)  # log-uniform favours short prefixes
    with pytest.raises(ValueError, match="budget_sampling must be"):
        registry.build("tokenizer", "promptable-tiny", budget_sampling="geometric")
    with pytest.raises(ValueError, match="full_budget_prob must be in"):
        registry.build("tokenizer", "promptable-tiny", full_budget_prob=1.5)


def test_the_full_pass_trains_the_last_tokens_at_every_sampled_budget(images):
    torch.manual_seed(0)
    grads = {}
    for weight in (0.0, 2.0):
        tok = registry.build("tokenizer", "promptable-tiny", full_budget_weight=weight).train()
        out = tok(images, Prompt(budget=2, boxes=BOX))
        assert out.tokens.ids.shape == (4, 2)  # what the step returns is the sampled prefix
        sum(out.losses.values()).backward()
        grads[weight] = tok.write.grad[:, 2:].abs().sum().item()  # the tokens past the prefix
        assert ("full_budget" in out.losses) == (weight > 0)
    assert grads[0.0] == 0 < grads[2.0]
    assert "full_budget" not in tok(images, Prompt(budget=8)).losses  # at K one pass is the full one
    with pytest.raises(ValueError, match="full_budget_weight must be"):
        registry.build("tokenizer", "promptable-tiny", full_budget_weight=-1.0)


def test_the_outside_term_is_the_log_error_outside_the_box_of_prompted_images(images):
    from trilemma.tokenizers.prompts import box_mask

    torch.manual_seed(0)
    tok = registry.build("tokenizer", "promptable-tiny", region_weight=3.0, outside_weight=0.5).train()
    out = tok(images, Prompt(budget=8, boxes=BOX))
    err = (out.recon - images).pow(2).mean(1, keepdim=True)
    inside = box_mask(Prompt(boxes=BOX), 4, 32, images.device)
    outside = (err * (1 - inside)).flatten(1).sum(1) / (1 - inside).flatten(1).sum(1)
    expected = 3.0 * (err * inside).mean() + 0.5 * outside.log().mean()
    assert out.losses["region"].item() == pytest.approx(expected.item(), rel=1e-4)
    # Images without a box (training gives them boxes of -1s: an empty region) add nothing.
    region = inside.clone()
    region[2:] = 0
    alone = tok._region_loss(out.recon, images, region)
    assert alone.item() == pytest.approx((3.0 * (err * region).mean() + 0.5 * outside[:2].log().sum() / 4).item(), rel=1e-4)
    with pytest.raises(ValueError, match="outside_weight must be"):
        registry.build("tokenizer", "promptable-tiny", outside_weight=-1.0)


def test_training_boxes_go_where_the_image_has_content():
    from trilemma.tokenizers.promptable import content_points, random_prompt

    torch.manual_seed(0)
    images = -torch.ones(64, 3, 32, 32)
    images[:, :, 20:28, 24:32] = 1.0  # one white object, bottom right, on a plain background
    xy = content_points(images)
    assert ((xy[:, 0] >= 0.75) & (xy[:, 1] >= 0.5) & (xy[:, 1] <= 0.875)).float().mean() > 0.9
    config = registry.build("tokenizer", "promptable-tiny", prompt_prob=1.0).config
    boxes = random_prompt(images, config).boxes[:, 0]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2] > 0.75).all()  # every box covers the object's side
    plain = content_points(-torch.ones(2000, 3, 32, 32))  # no content: anywhere
    assert 0.45 < plain.mean().item() < 0.55 and plain.min() < 0.05 and plain.max() > 0.95
    uniform = random_prompt(images, registry.build("tokenizer", "promptable-tiny", prompt_prob=1.0, prompt_boxes="uniform").config)
    assert (uniform.boxes[:, 0, 2] < 0.75).any()  # uniform boxes ignore the content
    with pytest.raises(ValueError, match="prompt_boxes must be"):
        registry.build("tokenizer", "promptable-tiny", prompt_boxes="saliency")


def test_training_prompts_anywhere_several_boxes_or_points_and_their_discs_weighted():
    from trilemma.tokenizers.prompts import POINT_RADIUS, point_mask, region_mask
    from trilemma.tokenizers.promptable import random_prompt

    torch.manual_seed(0)
    images = torch.rand(400, 3, 32, 32) * 2 - 1
    tok = registry.build("tokenizer", "promptable-tiny", prompt_prob=0.75, max_boxes=3, point_prob=0.4,
                         prompt_boxes="mixed", box_sides=(0.1, 0.7))
    prompt = random_prompt(images, tok.config)
    boxes = (prompt.boxes >= 0).all(-1).sum(1)  # boxes per image
    points = (prompt.points >= 0).all(-1).sum(1)
    assert not ((boxes > 0) & (points > 0)).any()  # an image gets boxes or points, never both
    assert set(boxes.tolist()) == {0, 1, 2, 3} and set(points.tolist()) == {0, 1, 2, 3, 4}
    assert 0.2 < ((boxes == 0) & (points == 0)).float().mean() < 0.3  # a quarter unprompted
    assert 0.35 < (points > 0).float().mean() / ((boxes > 0) | (points > 0)).float().mean() < 0.45
    real = prompt.boxes[(prompt.boxes >= 0).all(-1)]
    sides = real[:, 2:] - real[:, :2]
    assert (real <= 1).all() and sides.min() > 0.1 - 1e-6 and sides.max() < 0.7 + 1e-6 and sides.max() > 0.6
    # A point's region is a disc of POINT_RADIUS; an absent point (-1s) marks nothing and reads as no prompt.
    one = Prompt(points=torch.tensor([[[0.5, 0.5], [-1.0, -1.0]]]))
    disc = point_mask(one, 1, 64, torch.device("cpu"))[0, 0]
    assert disc.sum().item() == pytest.approx(math.pi * (POINT_RADIUS * 64) ** 2, rel=0.05)
    assert disc[32, 32] == 1 and disc[32, 32 + int(POINT_RADIUS * 64) + 2] == 0
    assert torch.equal(region_mask(one, 1, 64, torch.device("cpu")), point_mask(one, 1, 64, torch.device("cpu")))
    absent = Prompt(points=-torch.ones(1, 2, 2))
    enc = tok.prompts
    assert torch.equal(enc(absent, 1, torch.device("cpu")), enc(None, 1, torch.device("cpu")))
    assert not enc.dense(absent, 1, 8, torch.device("cpu")).any()
    tok.train()  # the region term of a point prompt weights the squared error in its disc
    pointed = Prompt(budget=tok.config.num_tokens, points=torch.tensor([[[0.25, 0.75]]]).expand(8, -1, -1))
    out = tok(images[:8], pointed)
    err = (out.recon.float() - images[:8]).pow(2).mean(1, keepdim=True)
    weighted = tok.config.region_weight * (err * point_mask(pointed, 8, 32, torch.device("cpu"))).mean()
    assert out.losses["region"].item() == pytest.approx(weighted.item(), rel=1e-5)
    with pytest.raises(ValueError, match="box_sides"):
        registry.build("tokenizer", "promptable-tiny", box_sides=(0.5, 0.2))


def test_dense_prompts_mark_the_positions_a_box_covers_and_a_point_falls_on():
    enc = registry.build("tokenizer", "promptable-tiny").prompts
    side = 8
    prompt = Prompt(boxes=torch.tensor([[[0.0, 0.0, 0.5, 0.25]], [[-1.0, -1.0, -1.0, -1.0]]]),
                    points=torch.tensor([[[0.9, 0.9]], [[0.1, 0.6]]]), point_labels=torch.tensor([[1], [0]]))
    dense = enc.dense(prompt, 2, side, torch.device("cpu"))
    grid = dense.reshape(2, side, side, -1)
    assert torch.allclose(grid[0, :2, :4], enc.inside.expand(2, 4, -1))  # rows 0-1, columns 0-3: in the box
    assert torch.allclose(grid[0, 7, 7], enc.point_marks.weight[1])  # the foreground point at (0.9, 0.9)
    assert torch.allclose(grid[1, 4, 0], enc.point_marks.weight[0])  # image 2: no box, a background point
    marked = {(0, r, c) for r in range(2) for c in range(4)} | {(0, 7, 7), (1, 4, 0)}
    for i, r, c in ((i, r, c) for i in range(2) for r in range(side) for c in range(side)):
        assert bool(grid[i, r, c].any()) == ((i, r, c) in marked)
    assert not enc.dense(None, 2, side, torch.device("cpu")).any()


def test_box_crops_read_the_grid_inside_a_box_and_pastes_draw_only_inside_it():
    from trilemma.tokenizers.prompts import box_crops, box_mask, paste_crops

    side = 8
    grid = torch.zeros(2, side, side, 3)
    grid[:, 2:4, 4:8] = 5.0  # rows 2-3, columns 4-7: the box of image 1, at the box's scale
    grid[:, 6:8, 0:2] = -7.0  # elsewhere
    prompt = Prompt(boxes=torch.tensor([[[0.5, 0.25, 1.0, 0.5]], [[-1.0, -1.0, -1.0, -1.0]]]))
    crops = box_crops(grid.flatten(1, 2), prompt, side, 4).reshape(2, 4, 4, 3)
    assert torch.allclose(crops[0, 1:3, 1:3], torch.tensor(5.0))  # inner cells: the box's content alone
    assert (crops[0] > 0).all() and not crops[1].any()  # edges blend bilinearly; no box, no crop
    pasted = paste_crops(torch.arange(1.0, 17.0)[None, :, None].expand(2, 16, 3), prompt, side).reshape(2, side, side, 3)
    assert torch.equal(pasted[..., 0] != 0, box_mask(prompt, 2, side, torch.device("cpu"))[:, 0] > 0)
    assert pasted[0, 2, 4, 0] < pasted[0, 2, 7, 0] < pasted[0, 3, 7, 0]  # the crop's order kept: left to right, top down


def test_the_region_a_prompt_asks_for_is_its_boxes_and_point_discs_together():
    from trilemma.tokenizers.prompts import POINT_RADIUS, prompt_regions

    r = POINT_RADIUS
    prompt = Prompt(boxes=torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.6, 0.3]], [[-1.0] * 4] * 2,
                                        [[-1.0] * 4] * 2]),
                    points=torch.tensor([[[-1.0, -1.0]], [[0.5, 0.9]], [[-1.0, -1.0]]]))
    regions = prompt_regions(prompt, 3, torch.device("cpu"))
    assert torch.allclose(regions[0], torch.tensor([0.1, 0.1, 0.6, 0.4]))  # both boxes' hull
    assert torch.allclose(regions[1], torch.tensor([0.5 - r, 0.9 - r, 0.5 + r, 1.0]))  # the disc's square, clipped
    assert torch.equal(regions[2], torch.full((4,), -1.0))  # asks for nothing


def test_a_region_share_gives_the_first_token_and_that_share_of_every_prefix_to_the_region():
    from trilemma.tokenizers.prompts import region_positions

    for share in (0.25, 0.5, 0.75, 1.0):
        full = region_positions(32, share)
        assert bool(full[0])
        for k in range(1, 33):
            assert torch.equal(region_positions(k, share), full[:k])
            assert int(full[:k].sum()) == math.ceil(k * share)


def test_crops_resample_a_region_and_pastes_put_it_back():
    from trilemma.tokenizers.prompts import crop_images, paste_images

    images = torch.rand(2, 3, 16, 16)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(crop_images(images, whole, 16), images, atol=1e-6)  # the whole image at its size: itself
    half = torch.tensor([[0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]])
    crops = crop_images(images, half, 8)  # an 8x8 quarter at its own size: its pixels
    assert torch.allclose(crops[0], images[0, :, :8, 8:], atol=1e-6)
    assert crop_images(images, half, 32).shape == (2, 3, 32, 32)
    around = torch.zeros(2, 3, 16, 16)
    pasted = paste_images(crops, half, around)
    assert torch.allclose(pasted[0, :, :8, 8:], images[0, :, :8, 8:], atol=1e-5)  # back where it came from
    assert torch.allclose(pasted[1, :, 8:, :8], images[1, :, 8:, :8], atol=1e-5)
    assert not pasted[0, :, 8:].any() and not pasted[0, :, :, :8].any()  # around it: untouched


@pytest.fixture
def zoom_tok():
    torch.manual_seed(0)
    return registry.build("tokenizer", "promptable-tiny", region_share=0.75).eval()


def test_with_a_region_share_the_region_is_tokenized_at_its_own_scale_and_any_prefix_decodes(zoom_tok, tok, images):
    from trilemma.tokenizers.prompts import crop_images, region_positions

    tok.encode(images)  # the codebook's k-means init, before it is copied
    zoom_tok.load_state_dict(tok.state_dict())
    box = torch.tensor([[[0.25, 0.0, 0.75, 0.5]]])
    k_max = zoom_tok.spec.max_tokens
    plain = zoom_tok.encode(images)
    assert torch.equal(plain.ids, tok.encode(images).ids)  # no prompt: the plain tokens
    full = zoom_tok.encode(images, Prompt(boxes=box))
    at = region_positions(k_max, 0.75)
    crops = tok.encode(crop_images(images, box[0].expand(4, 4), tok.image_size)).ids
    assert torch.equal(full.ids[:, at], crops[:, : int(at.sum())])  # the region's own tokens ...
    assert torch.equal(full.ids[:, ~at], plain.ids[:, : int((~at).sum())])  # ... and the whole image's first ones
    for k in range(1, k_max + 1):
        tokens = zoom_tok.encode(images, Prompt(budget=k, boxes=box))
        assert torch.equal(tokens.ids, full.ids[:, :k])  # a budget is a prefix
        recon = zoom_tok.decode(tokens)
        assert recon.shape == images.shape and torch.isfinite(recon).all()
    one = zoom_tok.decode(zoom_tok.encode(images, Prompt(budget=1, boxes=box)))
    outside = one[:, :, 16:]  # no token for the whole image: the region's mean colour around it
    assert torch.allclose(outside, outside[:, :, :1, :1].expand_as(outside))
    # A background point asks for no region: that image keeps its plain tokens, decoded as such.
    points = Prompt(budget=3, points=torch.tensor([[[0.5, 0.5]]]).expand(4, 1, 2),
                    point_labels=torch.tensor([[1], [0], [1], [0]]))
    tokens = zoom_tok.encode(images, points)
    assert torch.equal(tokens.ids[1::2], plain.ids[1::2, :3]) and not torch.equal(tokens.ids[::2], plain.ids[::2, :3])
    assert torch.allclose(zoom_tok.decode(tokens)[1::2], tok.decode(Tokens(ids=plain.ids[1::2, :3])), atol=1e-6)


def test_training_learns_and_the_cli_takes_budgets_boxes_and_points(tmp_path, capsys):
    from trilemma.training.loop import TrainConfig
    from trilemma.training.tokenizer import train_tokenizer

    cfg = TrainConfig(steps=30, batch_size=16, lr=2e-3, eval_every=30, save_every=30, warmup_steps=3)
    first = train_tokenizer("promptable-tiny", "shapes", tmp_path / "a", TrainConfig(steps=1, batch_size=16, lr=2e-3,
                            eval_every=1, save_every=1, warmup_steps=1), eval_images=32)
    result = train_tokenizer("promptable-tiny", "shapes", tmp_path / "b", cfg, eval_images=32)
    assert result["eval"]["psnr"] > first["eval"]["psnr"] + 1.0
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.png")
    run, png = str(tmp_path / "b"), str(tmp_path / "red.png")
    assert main(["tokenize", png, "--tokenizer", run, "--budget", "3", "--box", "0.1,0.1,0.5,0.5", "--point", "0.3,0.4",
                 "--out", str(tmp_path / "t.safetensors")]) == 0
    loaded = Tokens.load(tmp_path / "t.safetensors")
    assert loaded.ids.shape == (1, 3) and torch.allclose(loaded.prompt.boxes, torch.tensor([[[0.1, 0.1, 0.5, 0.5]]]))
    assert main(["reconstruct", png, "--tokenizer", run, "--budgets", "1", "2", "4", "8", "--out", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "k=1 PSNR" in out and "k=8 PSNR" in out
    assert main(["tokenize", png, "--tokenizer", run, "--budget", "auto", "--target-psnr", "10",
                 "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "tokens per image, each" in capsys.readouterr().out
    for bad, words in ((["--budget", "0"], "budget"), (["--box", "0.5,0.1,0.2,0.4"], "x0 <= x1"),
                       (["--box", "1,2"], "--box"), (["--budget", "auto"], "--target-psnr")):
        assert main(["tokenize", png, "--tokenizer", run, *bad, "--out", str(tmp_path / "x.safetensors")]) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    vq = checkpoint.save(registry.build("tokenizer", "vq-f4-shapes", channels=8), tmp_path / "vq")
    assert main(["tokenize", png, "--tokenizer", str(vq), "--budget", "3", "--out", str(tmp_path / "y.safetensors")]) == 1
    assert "takes no prompt" in capsys.readouterr().err


def test_on_a_frozen_base_autoencoder_the_tokens_describe_its_latents(tmp_path, images):
    torch.manual_seed(0)
    ae = registry.build("tokenizer", "ae-f4-shapes", channels=8)
    ae_dir = checkpoint.save(ae, tmp_path / "ae")
    tok = registry.build("tokenizer", "promptable-tiny", base=str(ae_dir))
    assert tok.config.base["name"] == "vqvae" and tok.side == 8  # recorded by architecture, not by path
    before = {k: v.clone() for k, v in tok.base.state_dict().items()}
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-3)
    tok.train()
    out = tok(images)
    assert not tok.base.training and "latent" in out.losses and out.recon.shape == images.shape
    sum(out.losses.values()).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in tok.base.state_dict().items())  # frozen
    assert all(p.grad is None for p in tok.base.parameters())
    tok.eval()
    tokens = tok.encode(images, Prompt(budget=3))
    saved = checkpoint.save(tok, tmp_path / "tok")
    shutil.rmtree(ae_dir)  # the checkpoint needs nothing outside itself
    again = checkpoint.load(saved, kind="tokenizer")
    assert torch.equal(again.decode(tokens), tok.decode(tokens))
    with pytest.raises(ValueError, match="continuous autoencoder"):
        registry.build("tokenizer", "promptable-tiny", base=str(checkpoint.save(registry.build("tokenizer", "vq-f4-shapes", channels=8), tmp_path / "vq")))


def test_the_photo_presets_put_64_px_crops_on_an_8x8_latent_grid(tmp_path):
    ae = registry.build("tokenizer", "ae-f8-photos", channels=8)
    assert ae.image_size == 64 and ae.spec.grid == (8, 8) and ae.spec.kind == "continuous"
    tok = registry.build("tokenizer", "promptable-photos", dim=32, encoder_depth=1, decoder_depth=1, heads=2,
                         base=str(checkpoint.save(ae, tmp_path / "ae")))
    assert tok.side == 8 and tok.image_size == 64
    from trilemma.tokenizers.promptable import random_prompt

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    assert random_prompt(images, tok.config).boxes is None  # trained without prompts: a region gets its own tokens
    box = Prompt(budget=4, boxes=torch.tensor([[[0.0, 0.0, 0.5, 0.5]]]))
    assert not torch.equal(tok.encode(images, box).ids[:, :3], tok.encode(images, Prompt(budget=4)).ids[:, :3])
    recipe = registry.get_preset("tokenizer", "ae-f8-photos").recipe
    assert recipe["random_crop"] > 0  # trained on crops of the folder's train files


def _study_inputs(n=6):
    from trilemma.data import load_dataset
    from trilemma.metrics.prompted import first_object_boxes

    ds = load_dataset("shapes", split="test", size=32)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), first_object_boxes(items)


def test_region_study_measures_four_conditions_inside_and_outside_the_box(tok):
    from trilemma.metrics.prompted import CONDITIONS, box_bits, quantize_boxes, region_study
    from trilemma.metrics.scores import psnr
    from trilemma.tokenizers.prompts import box_mask

    images, boxes = _study_inputs()
    assert boxes.shape == (6, 1, 4) and ((boxes[..., 2] - boxes[..., 0] - 1 / 3).abs() < 1e-6).all()
    tok.encode(images)  # an untrained VQ initialises its codebook on its first batch: before anything is compared
    rows = region_study(tok, images, boxes, [1, 2])
    assert [r["k"] for r in rows] == [1, 2]
    per_token = tok.spec.bits_per_token
    assert rows[0]["bits_box"] == box_bits(1) and abs(box_bits(1) - 2 * math.log2(257 * 258 / 2)) < 1e-9
    for r in rows:
        assert all(math.isfinite(v) for v in r.values()), r
        # Bits add up: tokens always, the box only where the decoder is told it.
        assert r["bits_tokens"] == r["k"] * per_token
        assert r["bits_total_neither"] == r["bits_total_encoder"] == r["bits_tokens"]
        assert r["bits_total_decoder"] == r["bits_total_both"] == r["bits_tokens"] + r["bits_box"]
        assert len({r[f"psnr_in_box_{c}"] for c in CONDITIONS}) == 4  # four different reconstructions
    # neither and both are the public path, with and without the (quantized) box.
    box = quantize_boxes(boxes)
    inside = box_mask(Prompt(boxes=box), len(box), 32, box.device)
    for r in rows:
        plain = tok.decode(tok.encode(images, Prompt(budget=r["k"]))).clamp(-1, 1)
        boxed = tok.decode(tok.encode(images, Prompt(budget=r["k"], boxes=box))).clamp(-1, 1)
        assert abs(psnr(plain, images).mean().item() - r["psnr"]) < 1e-4
        assert abs(psnr(plain, images, mask=inside).mean().item() - r["psnr_in_box_neither"]) < 1e-4
        assert abs(psnr(boxed, images, mask=inside).mean().item() - r["psnr_in_box_both"]) < 1e-4
        assert abs(psnr(boxed, images, mask=1 - inside).mean().item() - r["psnr_outside_both"]) < 1e-4
    # Only the masked pixels count: an error confined to the box leaves the outside PSNR infinite.
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :8] = 1
    recon = images[:1] + 0.5 * mask
    assert psnr(recon, images[:1], mask=1 - mask).isinf().all()
    assert abs(psnr(recon, images[:1], mask=mask).item() - 10 * math.log10(4 / 0.25)) < 1e-5


def test_region_study_sends_the_box_to_the_encoder_and_the_decoder_as_each_condition_says(tok, monkeypatch):
    from trilemma.metrics.prompted import region_study

    images, boxes = _study_inputs(4)
    encoded, decoded = spy_prompts(tok, monkeypatch, "boxes")
    region_study(tok, images, boxes, [1, 2], levels=16)
    assert sorted(encoded) == [False, True]  # one encoding without the box, one with it
    for k in (1, 2):  # (box in the encoder, box in the decoder): neither, decoder, encoder, both
        assert sorted((e, d) for n, e, d in decoded if n == k) == [(False, False), (False, True), (True, False), (True, True)]
    # Every other decode is the unprompted curve around a prompted total: plain ids, no box.
    assert all((e, d) == (False, False) for n, e, d in decoded if n not in (1, 2))


def test_region_study_compares_at_equal_total_bits_by_interpolating_in_log_bits(tok):
    from trilemma.metrics.prompted import box_bits, region_study, unprompted_at_bits

    assert unprompted_at_bits({1: 10.0, 2: 12.0, 4: 16.0}, 9, 18) == 12.0  # on a budget: its value
    mid = 12.0 + 4.0 * math.log(3 / 2) / math.log(2)  # 3 tokens' bits: between 2 and 4, linear in log bits
    assert abs(unprompted_at_bits({1: 10.0, 2: 12.0, 4: 16.0}, 9, 27) - mid) < 1e-9
    assert unprompted_at_bits({1: 10.0, 2: 12.0, 4: 16.0}, 9, 37) is None  # no budget spends that many
    images, boxes = _study_inputs(4)
    tok.encode(images)
    k_max, per_token = tok.spec.max_tokens, tok.spec.bits_per_token
    row, last = region_study(tok, images, boxes, [1, k_max], levels=16)
    k = (per_token + box_bits(1, 16)) / per_token  # 1 token and the box, in tokens
    lo, hi = math.floor(k), math.ceil(k)
    assert lo < k < hi <= k_max
    curve = {r["k"]: r for r in region_study(tok, images, boxes, [lo, hi], levels=16)}
    for key in ("in_box", "outside"):
        want = unprompted_at_bits({b: curve[b][f"psnr_{key}_neither"] for b in (lo, hi)}, per_token, row["bits_total_both"])
        assert abs(row[f"psnr_{key}_neither_at_bits_both"] - want) < 1e-5
        assert row[f"psnr_{key}_neither_at_bits_decoder"] == row[f"psnr_{key}_neither_at_bits_both"]
        assert row[f"psnr_{key}_neither_at_bits_encoder"] == row[f"psnr_{key}_neither"]  # the box is not sent
        assert last[f"psnr_{key}_neither_at_bits_both"] is None  # K tokens and a box: more than K tokens' bits


def test_random_boxes_are_seeded_of_random_size_and_aspect_and_fit_the_image():
    from trilemma.metrics.prompted import random_boxes

    boxes = random_boxes(200, seed=3)
    assert boxes.shape == (200, 1, 4) and torch.equal(boxes, random_boxes(200, seed=3))
    assert not torch.equal(boxes, random_boxes(200, seed=4))
    size = boxes[..., 2:] - boxes[..., :2]
    assert ((size >= 0.2) & (size <= 0.5)).all() and (boxes >= 0).all() and (boxes <= 1).all()
    assert (size[..., 0] / size[..., 1]).std() > 0.2  # aspect varies
    with pytest.raises(ValueError, match="`sizes`"):
        random_boxes(2, sizes=(0.6, 0.3))


def test_a_generator_trains_at_a_budget_and_an_autoregressive_one_stops_early(tmp_path, capsys):
    torch.manual_seed(0)
    tok_dir = str(checkpoint.save(registry.build("tokenizer", "promptable-tiny"), tmp_path / "tok"))
    common = ["--tokenizer", tok_dir, "--steps", "2", "--batch-size", "8", "--num-images", "16"]
    gen = str(tmp_path / "gen")
    assert main(["train", "generator", "--kind", "dalle", "--preset", "dalle-tiny", *common, "--budget", "4", "--out", gen]) == 0
    meta = checkpoint.read_config(tmp_path / "gen" / "model", kind="generator")
    assert meta["budget"] == 4 and meta["context"]["spec"]["max_tokens"] == 4  # models the first 4 of 8 tokens
    # It stops early: budget j draws exactly j tokens in j steps (one transformer pass and one image-head
    # draw per token: the prompt's pass predicts the first, each later one a cached step), not 4 then cut.
    model = checkpoint.load(tmp_path / "gen" / "model", kind="generator")
    calls = {"transformer": 0, "image_head": 0}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    text_ids = model.text.encode(["a red circle", "a blue square"])
    for j in (1, 2, 3, 4):
        calls.update(transformer=0, image_head=0)
        ids = model.sample(text_ids, SamplingConfig(budget=j, seed=0)).ids
        assert tuple(ids.shape) == (2, j) and calls == {"transformer": j, "image_head": j}, (j, calls)
    for k in ("2", "4"):
        assert main(["generate", "a red circle", "--generator", gen, "--n", "2", "--budget", k, "--seed", "0",
                     "--out", str(tmp_path / f"g{k}.png")]) == 0
        assert Image.open(tmp_path / f"g{k}.png").size[0] > 0
    capsys.readouterr()
    assert main(["generate", "a red circle", "--generator", gen, "--budget", "5", "--out", str(tmp_path / "x.png")]) == 1
    assert "1 <= budget <= 4" in capsys.readouterr().err
    assert main(["train", "generator", "--kind", "muse", "--preset", "muse-tiny", *common, "--budget", "9",
                 "--out", str(tmp_path / "m")]) == 1
    assert "--budget must be in [1, 8]" in capsys.readouterr().err
    vq = str(checkpoint.save(registry.build("tokenizer", "vq-f4-shapes", channels=8), tmp_path / "vq"))
    assert main(["train", "generator", "--kind", "dalle", "--preset", "dalle-tiny", "--tokenizer", vq, "--budget", "4",
                 "--out", str(tmp_path / "v")]) == 1
    assert "needs a promptable tokenizer" in capsys.readouterr().err
