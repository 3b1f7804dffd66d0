"""The token-conditioned diffusion decoder: builds on discrete grids, learns, decodes repeatably,
and plugs in wherever a tokenizer decodes (reconstruct, generate, eval reconstruction)."""

import pytest
import torch
from PIL import Image

from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.decoders.token_diffusion import DecodedBy
from trilemma.tokens import Tokens, TokenSpec
from trilemma.training.decoder import train_decoder
from trilemma.training.generator import train_generator
from trilemma.training.loop import TrainConfig
from trilemma.training.tokenizer import train_tokenizer

SPEC = TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4), levels=2)


def tiny(**cfg):
    torch.manual_seed(0)
    return registry.build("decoder", "token-diffusion-tiny", spec=SPEC, image_size=16, **cfg)


def ids(b=4, seed=0):
    return torch.randint(32, (b, 16, 2), generator=torch.Generator().manual_seed(seed))


def test_it_learns_and_decodes_repeatably():
    dec = tiny()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    opt = torch.optim.AdamW(dec.parameters(), lr=2e-3)
    dec.train()
    torch.manual_seed(0)
    losses = []
    for _ in range(120):
        loss = dec(images, ids())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])
    a, b = dec.decode(Tokens(ids=ids())), dec.decode(Tokens(ids=ids()))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_its_loss_is_zero_for_the_true_target_of_each_prediction_type(prediction, monkeypatch):
    dec = tiny(prediction=prediction)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen = {}

    def oracle(x, t):  # the UNet replaced by the exact answer, worked out from the noisy input
        xt, a = x[:, :3], dec.noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = (xt - a.sqrt() * images) / (1 - a).sqrt()
        seen["t"] = t
        out = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * images, "sample": images}
        return type("Out", (), {"sample": out[prediction]})

    monkeypatch.setattr(dec.unet, "forward", oracle)
    assert dec(images, ids())["loss"].item() < 1e-6 and "t" in seen


def test_it_refuses_what_it_cannot_decode(tiny_vq):
    with pytest.raises(ValueError, match="discrete"):
        registry.build("decoder", "token-diffusion-tiny", spec=TokenSpec("continuous", 16, latent_dim=4, grid=(4, 4)))
    with pytest.raises(ValueError, match="another tokenizer"):
        DecodedBy(tiny_vq, tiny())
    with pytest.raises(ValueError, match="ids"):
        tiny().decode(Tokens(latents=torch.zeros(1, 16, 4)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(steps=2, batch_size=8, eval_every=2, save_every=2, warmup_steps=1)
    tiny_tok = {"channels": 8, "quantizer": {"codebook_size": 32, "codebook_dim": 4}}
    train_tokenizer("vq-f4-shapes", "shapes", root / "tok", cfg, overrides=tiny_tok, eval_images=8)
    train_decoder(root / "tok", "shapes", root / "dec", cfg, preset="token-diffusion-tiny", eval_images=4)
    train_generator("dalle", root / "tok", "shapes", root / "gen", cfg, preset="dalle-tiny", num_images=16,
                    cache_dir=root / "cache")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "red.png")
    return root


def test_the_decoder_run_records_its_tokenizer_and_pictures_both_decoders(runs):
    meta = checkpoint.read_config(runs / "dec" / "model", kind="decoder")
    assert meta["tokenizer"]["hash"] == checkpoint.content_hash(runs / "tok" / "model")
    assert (runs / "dec" / "samples" / "decode_000002.png").is_file()
    assert {"psnr", "tokenizer_psnr"} <= set((runs / "dec" / "eval.csv").read_text().splitlines()[0].split(","))


def test_reconstruct_generate_and_eval_go_through_the_decoder(runs, tmp_path, capsys):
    assert main(["reconstruct", str(runs / "red.png"), "--decoder", str(runs / "dec"), "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file() and "PSNR" in capsys.readouterr().out
    assert main(["generate", "a red circle", "--generator", str(runs / "gen"), "--decoder", str(runs / "dec"), "--n", "2",
                 "--seed", "0", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    args = ["eval", "reconstruction", "--tokenizer", str(runs / "tok"), "--decoder", str(runs / "dec"), "--n", "4",
            "--features", "none", "--no-lpips", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    psnr_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("PSNR"))
    assert psnr_line.count("dB") == 2  # the tokenizer's own decoder and the diffusion decoder, side by side
    assert main(["reconstruct", str(runs / "red.png"), "--tokenizer", str(runs / "gen"), "--decoder", str(runs / "dec"),
                 "--out", str(tmp_path / "x.png")]) == 1
