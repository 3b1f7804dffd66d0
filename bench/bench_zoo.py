"""Time ``eval tradeoff`` on pretrained-size autoencoders: can a CPU compare them on a few dozen images?

Builds each diffusers class at the size of a published checkpoint (SD / SDXL's VAE, FLUX.1's,
FLUX.2's, DC-AE f32c32 as in SANA, TAESD, aMUSEd's VQ-GAN) with *random weights*, saves it with
``save_pretrained``, imports it as ``trilemma import diffusers`` does, and runs the trade-off study
on ``--n`` images of a folder at ``--size``. Random weights cost what trained ones cost (the same
layers, the same arithmetic), so the timings stand; the quality columns of these rows mean nothing
and are not written. No weights are downloaded (none are on this machine). On 2 CPU cores the
full-size KL and DC autoencoders take 2-3 s per image to encode and as long to decode at 256, and a
continuous tokenizer's effective bits decode every image once per quantization step tried (about a
dozen), so the whole set takes most of an hour there; ``--models taesd`` runs in about a minute.

    .venv/bin/python bench/bench_zoo.py --data photos/ [--n 48] [--size 256] [--models sd-vae flux-vae ...]
        [--bits-step-images 8]

Prints a table and writes bench/results/zoo.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import report
from trilemma import checkpoint
from trilemma.studies.tradeoff import tradeoff
from trilemma.tokenizers.interop import import_diffusers

KL = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
          block_out_channels=(128, 256, 512, 512), layers_per_block=2)
DC_BLOCKS = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3


def build(name: str):
    import diffusers

    if name == "sd-vae":
        return diffusers.AutoencoderKL(latent_channels=4, scaling_factor=0.18215, **KL)
    if name == "flux-vae":
        return diffusers.AutoencoderKL(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                                       use_post_quant_conv=False, **KL)
    if name == "flux2-vae":
        return diffusers.AutoencoderKLFlux2()
    if name == "dc-ae-f32c32":
        return diffusers.AutoencoderDC(
            latent_channels=32, encoder_block_types=DC_BLOCKS, decoder_block_types=DC_BLOCKS,
            encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
            decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3, decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
            upsample_block_type="interpolate", scaling_factor=0.41407)
    if name == "taesd":
        return diffusers.AutoencoderTiny()
    if name == "amused-vq":
        return diffusers.VQModel(
            block_out_channels=(128, 256, 256, 512, 768), down_block_types=("DownEncoderBlock2D",) * 5,
            up_block_types=("UpDecoderBlock2D",) * 5, latent_channels=64, vq_embed_dim=64, num_vq_embeddings=8192,
            layers_per_block=2, norm_num_groups=32, lookup_from_codebook=True, force_upcast=False)
    raise ValueError(f"unknown model {name!r}")


MODELS = ("sd-vae", "flux-vae", "flux2-vae", "dc-ae-f32c32", "taesd", "amused-vq")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a folder of images")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch-size", type=int, default=4, help="images per forward (progress moves per batch)")
    p.add_argument("--bits-step-images", type=int, default=None, metavar="N",
                   help="choose the effective-bits step on the first N images (eval tradeoff's flag; default: all)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for name in args.models:
            torch.manual_seed(0)
            build(name).save_pretrained(Path(tmp) / "diffusers" / name)
            dirs.append(checkpoint.save(import_diffusers(Path(tmp) / "diffusers" / name, image_size=args.size),
                                        Path(tmp) / name))
        for name, directory in zip(args.models, dirs):  # one study per model: each one's own wall time
            start = time.perf_counter()
            (row,) = tradeoff([directory], data=args.data, n=args.n, size=args.size, features="none", lpips=False,
                              split="all", progress=True, batch_size=args.batch_size,
                              bits_step_images=args.bits_step_images)
            spec = checkpoint.load(directory, kind="tokenizer").spec
            rows.append({"model": name, "tokens": row["tokens_per_image"], "f": row["downsampling"],
                         "latent_dim": spec.latent_dim, "floats_per_image": row.get("floats_per_image"),
                         "encode_images_per_s": row["encode_images_per_s"], "decode_images_per_s": row["decode_images_per_s"],
                         "study_s": time.perf_counter() - start})
    total = sum(r["study_s"] for r in rows)
    print(f"{len(rows)} tokenizers on {args.n} images at {args.size}: {total:.0f} s")
    report("zoo", rows, ["model", "tokens", "f", "latent_dim", "encode_images_per_s", "decode_images_per_s", "study_s"],
           extra={"images": args.n, "size": args.size, "data": str(args.data), "total_s": total,
                  "bits_step_images": args.bits_step_images,
                  "weights": "random (timing only: these rows' PSNR / bits are not measured quality)"})


if __name__ == "__main__":
    main()
