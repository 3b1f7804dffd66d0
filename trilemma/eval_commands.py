"""What ``trilemma eval ...`` does, as plain functions over parsed arguments (the CLI stays a parser).

- ``eval reconstruction``: one tokenizer on the held-out images; prints the metrics, writes
  ``OUT/reconstruction.json``.
- ``eval generation``: a generator (and its tokenizer) prompted with held-out captions; FID / KID /
  precision-recall against the held-out images, each beside its real-vs-real floor, plus prompt
  adherence (the shapes probe on shapes; on a folder, a contrastive text-image model trained on
  the folder and cached in ``OUT/contrastive``). Several ``--cfg-scale`` values are evaluated in
  turn on the same prompts and printed side by side. Writes ``OUT/generation.json`` (one run per
  guidance scale).
- ``eval tradeoff``: several tokenizers on the same images; writes the report of
  ``trilemma.eval.report`` (JSON, Markdown, PNG plots) into ``OUT``.

Everything is seeded by ``--seed`` (data, tokenizer noise, sampling), so a run can be repeated.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from trilemma.eval.report import bits_cell, markdown_table, psnr_cell, write_json, write_report
from trilemma.eval.tradeoff import discrete_front, load_images, resolve_features, settings, tradeoff


def _fmt(v, fmt: str = ".4g", unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, (int, float)):
        return format(v, fmt) + unit
    return str(v)


def metric_lines(row: dict) -> list[str]:
    """A reconstruction row as aligned ``name  value`` lines."""
    pairs = [
        ("tokenizer", row["tokenizer"]),
        ("discrete", _fmt(row.get("discrete"))),
        ("tokens per image", _fmt(row.get("tokens_per_image"), "g")),
        ("bits per image", bits_cell(row)),
        ("PSNR", psnr_cell(row.get("psnr")) + ("" if row.get("psnr") is None else " dB")),
        ("SSIM", _fmt(row.get("ssim"), ".4f")),
        ("LPIPS", _fmt(row.get("lpips"), ".4f") + ("" if row.get("lpips") is not None else " (no backbone weights on disk)")),
        ("rFID", _fmt(row.get("rfid"), ".3f") + ("" if row.get("rfid") is not None else " (no features)")),
    ]
    if row.get("discrete"):
        usage = row.get("codebook_usage")
        pairs += [
            ("codebook usage", "—" if usage is None else f"{100 * usage:.1f}% of {row.get('vocab_size')} codes"),
            ("perplexity", _fmt(row.get("perplexity"), ".1f")),
        ]
    pairs += [
        ("encode", _fmt(row.get("encode_images_per_s"), ",.0f", " images/s")),
        ("decode", _fmt(row.get("decode_images_per_s"), ",.0f", " images/s")),
    ]
    width = max(len(k) for k, _ in pairs)
    return [f"{k:<{width}}  {v}" for k, v in pairs]


def _probe_cache(args: argparse.Namespace) -> Path:
    return Path(args.probe_cache) if args.probe_cache else Path(args.out) / "probe"


# ----------------------------------------------------------------------------- reconstruction


def reconstruction_command(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    (row,) = tradeoff(
        [args.tokenizer], data=args.data, n=args.n, seed=args.seed, features=args.features,
        out_dir=args.out, probe_cache=_probe_cache(args), batch_size=args.batch_size, lpips=not args.no_lpips,
    )
    print("\n".join(metric_lines(row)))
    path = write_json(
        {"settings": settings(args.data, args.n, args.seed, args.features, row["image_size"]), "metrics": row},
        Path(args.out) / "reconstruction.json",
    )
    print(f"wrote {path}")
    return row


# ----------------------------------------------------------------------------- generation


def _sampling(args: argparse.Namespace, cfg_scale: float) -> dict:
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    cfg_scale=cfg_scale, seed=args.seed)
    if args.steps is not None:
        sampling["steps"] = args.steps
    return sampling


def generation_command(args: argparse.Namespace) -> list[dict]:
    """The reference is the first ``n`` held-out items; the floor is ``n`` other real images
    (shapes: the val split; a folder: its training images, as val and test coincide), and the
    prompts are the floor images' captions. Generated and floor sets then answer the same prompts,
    so a perfect generator scores the floor: prompts taken from the reference would pair each
    generated image with its reference twin and push FID below the floor."""
    from trilemma.pipeline import Pipeline

    torch.manual_seed(args.seed)
    out = Path(args.out)
    pipe = Pipeline.load(args.generator, args.tokenizer)
    scales = list(dict.fromkeys(args.cfg_scale))  # in the order given, each once
    samplings = [_sampling(args, scale) for scale in scales]
    for sampling in samplings:
        pipe.generator.sampling_config(**sampling)  # reject bad options before any work
    size = pipe.tokenizer.image_size
    shapes = args.data == "shapes"

    reference, _ = load_images(args.data, args.n, size, seed=args.seed, split="test")
    floor, items = load_images(args.data, args.n, size, seed=args.seed, split="val" if shapes else "train")
    prompts = [it["caption"] for it in items]
    probe = contrastive = None
    if shapes:
        from trilemma.eval.probe import load_or_train_probe

        probe = load_or_train_probe(_probe_cache(args), size=size, seed=args.seed)
        choice = (args.features or "none").lower()
        features = probe.features if choice in ("auto", "domain") else resolve_features(choice, args.data, size, args.seed)
    else:
        from trilemma.data import load_dataset
        from trilemma.eval.contrastive import train_contrastive

        features = resolve_features(args.features, args.data, size, args.seed, _probe_cache(args))
        train = load_dataset(args.data, split="train", size=size, seed=args.seed)
        contrastive = train_contrastive(train, cache_dir=out / "contrastive", seed=args.seed)

    from trilemma.eval.generation import evaluate_generation

    if len(samplings) > 1:  # a sweep: the real sets' features once, not once per scale
        from trilemma.eval.features import extract

        reference = extract(features, reference, batch_size=args.batch_size)
        floor = extract(features, floor, batch_size=args.batch_size)
    results = []
    for sampling in samplings:
        if len(samplings) > 1:
            print(f"cfg_scale {sampling['cfg_scale']:g}")
        results.append(evaluate_generation(
            pipe, prompts, reference, floor, features,
            attributes=[it["attributes"] for it in items] if shapes else None,
            probe=probe, contrastive=contrastive, sampling=sampling, batch_size=args.batch_size,
        ))
    if len(results) == 1:
        print("\n".join(generation_lines(results[0])))
    else:
        print("\n".join(sweep_lines(results, [f"cfg {s:g}" for s in scales])))
    path = write_json({
        "settings": {**settings(args.data, args.n, args.seed, args.features, size),
                     "generator": str(args.generator), "tokenizer": str(args.tokenizer) if args.tokenizer else None},
        "runs": [{"sampling": sampling, "metrics": result} for sampling, result in zip(samplings, results)],
    }, out / "generation.json")
    print(f"wrote {path}")
    return results


def _floor(result: dict, key: str):
    """The real-vs-real floor of score ``key`` (``NAME_floor``; KID's mean has ``kid_floor``), or None."""
    return result.get("kid_floor" if key == "kid_mean" else f"{key}_floor")


def generation_lines(result: dict) -> list[str]:
    """Each score beside its real-vs-real floor (``NAME_floor``) when there is one."""
    lines = []
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        if key.endswith("_floor"):
            continue
        floor = _floor(result, key)
        text = _fmt(value)
        if floor is not None:
            text += f"   (real vs real: {_fmt(floor)})"
        lines.append(f"{key:<{width}}  {text}")
    return lines


def sweep_lines(results: list[dict], names: list[str]) -> list[str]:
    """One row per score, one column per run, then the real-vs-real floor (the same for every run)."""
    keys = [k for k in results[0] if not k.endswith("_floor")]
    floors = [_floor(results[0], k) for k in keys]
    header = ["", *names, "real vs real"]
    rows = [[k, *(_fmt(r.get(k)) for r in results), _fmt(f) if f is not None else ""] for k, f in zip(keys, floors)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


# ----------------------------------------------------------------------------- trade-off


def tradeoff_command(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    rows = tradeoff(
        args.tokenizers, data=args.data, n=args.n, size=args.size, seed=args.seed, features=args.features,
        out_dir=args.out, probe_cache=_probe_cache(args), batch_size=args.batch_size, lpips=not args.no_lpips,
    )
    files = write_report(rows, args.out, settings=settings(args.data, args.n, args.seed, args.features,
                                                          rows[0]["image_size"]))
    print(markdown_table(rows, discrete_front(rows, "psnr")))
    print("* on the bits-vs-PSNR Pareto front")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return rows
