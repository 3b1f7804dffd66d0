"""Our samplers against two public peers at one configuration, side by side in one process:
DALL-E against DALLE-pytorch 1.6.6 (KV-cached decoding, top-k 10%), Muse against
muse-maskgit-pytorch 0.3.5 (8 parallel steps, guidance 3). Both sides: width 256, 4 blocks of 4
heads of 64, 16 text + 256 image tokens (16 x 16), 1024 codes, random weights (timing only), fp32.
Ours includes its prompt encoder; the Muse peer is handed ready text embeddings (its T5 would
download weights), and neither side decodes pixels.

The peers live outside the project's environment, in a folder of their own (their dependencies
pin old libraries); import-only installs suffice:

    .venv/bin/python -m pip install --no-deps --target /tmp/peers dalle-pytorch==1.6.6 \
        muse-maskgit-pytorch==0.3.5 axial-positional-embedding rotary-embedding-torch DALL-E \
        taming-transformers-rom1504 ftfy regex beartype ema-pytorch memory-efficient-attention-pytorch \
        omegaconf antlr4-python3-runtime==4.9.3 transformers tokenizers huggingface-hub \
        "pytorch-lightning<2" lightning-utilities torchmetrics "setuptools<70"
    PYTHONPATH=/tmp/peers .venv/bin/python bench/bench_peers.py [--batches 1 16] [--repeat 3] [--bf16]

``--bf16`` adds ours under bf16 autocast beside the fp32 rows (the peers stay fp32: ``speedup_bf16``
is what a user gets from ``--dtype bf16``, not a like-for-like comparison).

A peer that does not import is skipped with the reason. Writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report  # noqa: E402

from trilemma import registry  # noqa: E402
from trilemma.data.text import TextTokenizer  # noqa: E402
from trilemma.generators.sampling import SamplingConfig  # noqa: E402
from trilemma.tokens import TokenSpec  # noqa: E402

WIDTH, DEPTH, HEADS, TEXT, SIDE, CODES = 256, 4, 4, 16, 16, 1024
MUSE_STEPS, MUSE_CFG = 8, 3.0


def ours(family: str, bf16: bool = False):
    """Our generator of ``family`` at the shared configuration, and a sampler for a batch."""
    text = TextTokenizer.build(["a large red circle at the top left and a small blue square"], max_length=TEXT)
    spec = TokenSpec("discrete", SIDE * SIDE, vocab_size=CODES, grid=(SIDE, SIDE))
    sizes = {"dalle": {"dim": WIDTH, "depth": DEPTH, "heads": HEADS},
             "muse": {"dim": WIDTH, "depth": DEPTH, "heads": HEADS, "encoder_depth": 2}}[family]
    torch.manual_seed(0)
    gen = registry.build("generator", f"{family}-shapes", spec=spec, text=text, **sizes).eval()
    sampling = (SamplingConfig(top_k=CODES // 10, seed=0) if family == "dalle"
                else SamplingConfig(steps=MUSE_STEPS, cfg_scale=MUSE_CFG, seed=0))

    def sample(batch: int):
        ids = text.encode(["a large red circle at the top left"] * batch)

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                gen.sample(ids, sampling)
        return run

    return sample


def dalle_pytorch():
    from dalle_pytorch import DALLE, DiscreteVAE

    vae = DiscreteVAE(image_size=SIDE * 4, num_layers=2, num_tokens=CODES, codebook_dim=32, hidden_dim=16)
    torch.manual_seed(0)
    model = DALLE(dim=WIDTH, vae=vae, num_text_tokens=1000, text_seq_len=TEXT, depth=DEPTH, heads=HEADS,
                  dim_head=WIDTH // HEADS).eval()

    def sample(batch: int):
        text = torch.randint(1, 1000, (batch, TEXT))

        def run():
            with torch.no_grad():
                model.generate_images(text, filter_thres=0.9, use_cache=True)
        return run

    return sample


def muse_maskgit_pytorch():
    import muse_maskgit_pytorch.muse_maskgit_pytorch as muse
    from muse_maskgit_pytorch import MaskGit, MaskGitTransformer, VQGanVAE

    muse.get_encoded_dim = lambda name: WIDTH  # its T5's width, without loading T5
    torch.manual_seed(0)
    transformer = MaskGitTransformer(num_tokens=CODES, seq_len=SIDE * SIDE, dim=WIDTH, depth=DEPTH,
                                     dim_head=WIDTH // HEADS, heads=HEADS)
    vae = VQGanVAE(dim=32, codebook_size=CODES, layers=2)
    model = MaskGit(image_size=SIDE * 4, transformer=transformer, vae=vae).eval()
    model.vae.decode_from_ids = lambda ids: ids  # ids out, no pixels (as ours)

    def sample(batch: int):
        embeds = torch.randn(batch, TEXT, WIDTH)
        transformer.encode_text = lambda texts: embeds

        def run():
            with torch.no_grad():
                model.generate(["a prompt"] * batch, fmap_size=SIDE, timesteps=MUSE_STEPS, cond_scale=MUSE_CFG)
        return run

    return sample


PEERS = {"dalle": ("DALLE-pytorch 1.6.6", dalle_pytorch), "muse": ("muse-maskgit-pytorch 0.3.5", muse_maskgit_pytorch)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time ours under bf16 autocast (the peers stay fp32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, skipped = [], {}
    for family, (peer_name, build_peer) in PEERS.items():
        try:
            peer = build_peer()
        except Exception as err:  # a peer that is not installed, or does not build here
            skipped[peer_name] = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"skipped {peer_name}: {skipped[peer_name]}")
            continue
        mine, mine_bf16 = ours(family), ours(family, bf16=True)
        for batch in args.batches:
            t_ours = best_time(mine(batch), repeat=args.repeat)
            t_peer = best_time(peer(batch), repeat=args.repeat)
            t_bf16 = best_time(mine_bf16(batch), repeat=args.repeat) if args.bf16 else None
            rows.append({"family": family, "peer": peer_name, "batch": batch, "ours_s": t_ours, "peer_s": t_peer,
                         "ours_s_per_image": t_ours / batch, "speedup": t_peer / t_ours, "ours_bf16_s": t_bf16,
                         "speedup_bf16": t_peer / t_bf16 if t_bf16 else None})
            print(rows[-1], flush=True)
    report("peers", rows, ["family", "peer", "batch", "ours_s", "peer_s", "ours_s_per_image", "speedup", "ours_bf16_s",
                           "speedup_bf16"],
           {"config": {"width": WIDTH, "depth": DEPTH, "heads": HEADS, "text_tokens": TEXT, "image_tokens": SIDE * SIDE,
                       "codes": CODES, "dalle": "top-k 10%, KV cache", "muse": f"{MUSE_STEPS} steps, guidance {MUSE_CFG}"},
            "skipped": skipped})


if __name__ == "__main__":
    main()
