"""Time a 1,000-image FID on CPU with each feature network, in fp32 and under bf16 autocast.

One FID = features of 2 x N synthetic 32x32 images (two seeds of the same distribution, so the
score is a real-vs-real floor) + the Frechet distance in float64. The bf16 variant only autocasts
the feature network; its FID is reported beside the fp32 one with the relative feature error, so
it is only worth using where ``close`` is true.

    .venv/bin/python bench/bench_fid.py [--n 1000] [--networks inception domain-cnn] [--no-bf16] [--threads 1]

Prints a table and writes bench/results/fid.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch

from trilemma import registry
from trilemma.metrics.features import extract
from trilemma.metrics.scores import fid_from_features

RESULTS = Path(__file__).parent / "results" / "fid.json"
CLOSE_FEATURE_ERROR = 0.02  # relative L2 error of bf16 features below which bf16 counts as close
CLOSE_FID_ERROR = 0.05  # and relative FID change


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] in [-1, 1]: a coloured gradient background with three flat rectangles."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    colour = lambda: torch.rand(n, 3, 1, 1, generator=g) * 2 - 1  # noqa: E731
    images = colour() * (1 - yy) + colour() * yy
    for _ in range(3):
        x0, y0 = torch.rand(2, n, 1, 1, generator=g) * 0.7
        w, h = torch.rand(2, n, 1, 1, generator=g) * 0.4 + 0.1
        inside = ((xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)).unsqueeze(1)
        images = torch.where(inside, colour(), images)
    return images.clamp(-1, 1)


def run(network: str, real: torch.Tensor, fake: torch.Tensor, batch_size: int, bf16: bool) -> list[dict]:
    model = registry.build("features", network).eval()
    model(real[:2])  # warm-up: the TorchScript Inception profiles its first calls
    rows, reference = [], None
    for dtype in ["fp32", "bf16"] if bf16 else ["fp32"]:
        use_bf16 = dtype == "bf16"
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        start = time.perf_counter()
        with autocast:
            f_real = extract(model, real, batch_size=batch_size, progress=False)
            f_fake = extract(model, fake, batch_size=batch_size, progress=False)
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # N < dim makes the covariance singular; expected here
            fid = fid_from_features(f_real, f_fake)
        fid_s = time.perf_counter() - start
        row = {
            "network": network,
            "dtype": dtype,
            "dim": model.dim,
            "images": len(real) + len(fake),
            "extract_seconds": round(extract_s, 2),
            "images_per_second": round((len(real) + len(fake)) / extract_s, 1),
            "fid_seconds": round(fid_s, 2),
            "total_seconds": round(extract_s + fid_s, 2),
            "fid": fid,
        }
        if reference is None:
            reference = (f_real, fid)
        else:
            feature_error = ((f_real - reference[0]).norm() / reference[0].norm()).item()
            fid_change = abs(fid - reference[1]) / max(abs(reference[1]), 1e-12)
            row |= {
                "feature_rel_error_vs_fp32": feature_error,
                "fid_delta_vs_fp32": fid - reference[1],
                "close": feature_error < CLOSE_FEATURE_ERROR and fid_change < CLOSE_FID_ERROR,
            }
        rows.append(row)
        print(f"  {network} {dtype}: {row['images_per_second']} img/s, FID {fid:.4f}", flush=True)
    return rows


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images per set (two sets)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--networks", nargs="+", default=["domain-cnn", "inception"])
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 avoids OpenMP thrashing on a shared CPU)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)  # the domain CNN is random-init: fine for timing
    real = synthetic_images(args.n, args.size, seed=0)
    fake = synthetic_images(args.n, args.size, seed=1)
    load_before = os.getloadavg()[0]
    rows = []
    for network in args.networks:
        rows += run(network, real, fake, args.batch_size, bf16=not args.no_bf16)

    threads = torch.get_num_threads()
    print(f"\nFID of {args.n} vs {args.n} synthetic {args.size}x{args.size} images, CPU, {threads} threads")
    header = ("network", "dtype", "images/s", "extract s", "FID s", "total s", "FID", "dFID", "feat err")
    print("{:<12} {:<5} {:>9} {:>10} {:>7} {:>8} {:>10} {:>9} {:>9}".format(*header))
    for r in rows:
        extra = (
            f"{r['fid_delta_vs_fp32']:>+9.4f} {r['feature_rel_error_vs_fp32']:>9.4f}"
            if "close" in r
            else f"{'':>9} {'':>9}"
        )
        print(
            f"{r['network']:<12} {r['dtype']:<5} {r['images_per_second']:>9} {r['extract_seconds']:>10} "
            f"{r['fid_seconds']:>7} {r['total_seconds']:>8} {r['fid']:>10.4f} {extra}"
        )
    report = {
        "benchmark": "fid",
        "images_per_set": args.n,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
