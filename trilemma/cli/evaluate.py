"""``trilemma eval reconstruction | generation | captioning | tradeoff``.

- ``reconstruction``: one tokenizer on the held-out images; prints the metrics, writes
  ``OUT/reconstruction.json``. With ``--region``, a promptable tokenizer's region study on the same
  images (``trilemma.studies.region``): a table per kind of prompt, saved under ``region``.
- ``generation``: a generator (and its tokenizer) on the protocol of ``trilemma.studies.benchmark``
  (per category of prompts: unseen, the headline; on shapes also novel pairs and training prompts;
  each with its reference, real-vs-real floor and adherence ceiling). Several ``--cfg-scale``
  values are evaluated in turn on the same prompts and printed side by side. Prints the protocol and
  one table per category in Markdown, writes it to ``OUT/generation.md`` and ``OUT/generation.json``
  (the protocol, one run per guidance scale).
- ``captioning``: a generator trained in both orders captions held-out images; on shapes each
  caption is parsed and scored per attribute / object / caption, on a folder by a contrastive model
  beside the true captions' score; writes ``OUT/captioning.json``.
- ``tradeoff``: several tokenizers on the same images; writes the report of ``trilemma.studies.report``
  (JSON, Markdown, PNG plots) into ``OUT``; ``--region`` as above for each promptable one (its
  tables under ``region`` in its last row of ``report.json``).

Everything is seeded by ``--seed`` (data, tokenizer noise, sampling), so a run can be repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from trilemma.cli import options
from trilemma.cli.options import Parser, command, group, positive_int, seed
from trilemma.files import atomic_write_bytes
from trilemma.pipeline import Pipeline
from trilemma.studies.benchmark import folder_contrastive, protocol_lines
from trilemma.studies.captioning import evaluate_captioning
from trilemma.studies.generation import benchmark, evaluate_generation
from trilemma.studies.images import FEATURE_CHOICES, SPLITS, check_split
from trilemma.studies.region import REGION_CHOICES, region_lines
from trilemma.studies.report import bits_cell, markdown_table, psnr_cell, real_score, write_json, write_report
from trilemma.studies.tradeoff import discrete_front, reconstruction_picture, settings, tradeoff


def add_parsers(sub: argparse._SubParsersAction) -> None:
    evals = group(sub, "eval", "evaluate tokenizers and generators (metrics, trade-off report)", "eval_command")
    common = Parser(add_help=False)
    common.add_argument("--data", default="shapes", help="'shapes' or a directory of images")
    common.add_argument("--n", type=positive_int, default=1000, help="images to evaluate on")
    common.add_argument("--split", default="test", choices=SPLITS,
                        help="which images: test (held out; generation: the headline's reference), novel (shapes "
                             "with a held-out colour x shape pair), or all of a folder kept for testing")
    common.add_argument("--features", default="auto", choices=FEATURE_CHOICES,
                        help="FID features: auto = domain probe on shapes, Inception on a folder")
    common.add_argument("--probe-cache", default=None, help="where the shapes probe is cached (default: OUT/probe)")
    common.add_argument("--batch-size", type=positive_int, default=64)
    common.add_argument("--seed", type=seed, default=0)
    common.add_argument("--out", default="runs/eval", help="output directory")
    options.add_device(common)
    region = Parser(add_help=False)
    region.add_argument("--region", default=None, choices=REGION_CHOICES,
                        help="promptable tokenizers: PSNR inside / outside random boxes, points or both (on shapes "
                             "also each first object's box) with the prompt told to neither half, the encoder, the "
                             "decoder or both, against the unprompted tokenizer at equal bits; at budgets 1, 2, 4 ... K")

    p = command(evals, "reconstruction", "PSNR, SSIM, LPIPS, rFID, usage, bits of one tokenizer", run_reconstruction,
                parents=[common, region])
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint or run directory")
    p.add_argument("--decoder", default=None, help="also score a token-conditioned decoder on the same tokens, side by side")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p = command(evals, "generation", "FID/KID/precision-recall with floors, prompt adherence", run_generation,
                parents=[common])
    p.add_argument("--generator", required=True, help="generator checkpoint or run directory")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    p.add_argument("--diagnostic-n", type=options.non_negative_int, default=None,
                   help="shapes: prompts of each diagnostic category (novel pairs, training prompts); "
                        "default a third of --n, 0 for the headline alone")
    options.add_sampling(p, several_scales=True)
    options.add_precision(p)
    p = command(evals, "captioning", "caption held-out images and score the captions (a generator trained in both orders)",
                run_captioning, parents=[common])
    p.add_argument("--generator", required=True, help="generator checkpoint or run directory (dalle, caption_share > 0)")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the one the generator recorded)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    options.add_precision(p)
    p = command(evals, "tradeoff", "sweep tokenizers: table + PSNR/rFID-vs-bits plots", run_tradeoff,
                parents=[common, region])
    p.add_argument("--tokenizers", nargs="+", required=True, metavar="DIR", help="tokenizer checkpoints or run directories")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image size (default: the one the tokenizers share); a convolutional tokenizer (vqvae, patch, "
                        "imported diffusers) runs at any multiple of its factor, whatever it was trained at")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--bits-step-images", type=positive_int, default=None, metavar="N",
                   help="choose continuous tokenizers' effective-bits step on the first N images (default: all); "
                        "a large autoencoder on a CPU decodes the set about a dozen times otherwise")


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


def _probe_cache(args: argparse.Namespace) -> Path:
    return Path(args.probe_cache) if args.probe_cache else Path(args.out) / "probe"


# ----------------------------------------------------------------------------- reconstruction


def metric_lines(*rows: dict) -> list[str]:
    """Reconstruction rows as aligned ``name  value [value ...]`` lines, one column per row; a metric
    that reads the same in every column (e.g. why it was left out) is written once."""
    columns = [_metric_pairs(row) for row in rows]
    cells = [[name, *(col[i][1] for col in columns)] for i, (name, _) in enumerate(columns[0])]
    cells = [line[:2] if len(set(line[1:])) == 1 else line for line in cells]
    widths = [max(len(line[0]) for line in cells)] + [
        max((len(line[k]) for line in cells if len(line) > 2), default=0) for k in range(1, len(rows) + 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]


def _metric_pairs(row: dict) -> list[tuple[str, str]]:
    pairs = [
        ("tokenizer", row["tokenizer"]),
        ("discrete", _fmt(row.get("discrete"))),
        ("tokens per image", _fmt(row.get("tokens_per_image"), "g")),
        ("bits per image", bits_cell(row)),
        ("PSNR", psnr_cell(row.get("psnr")) + ("" if row.get("psnr") is None else " dB")),
        ("SSIM", _fmt(row.get("ssim"), ".4f")),
        ("LPIPS", _fmt(row.get("lpips"), ".4f") + ("" if row.get("lpips") is not None else " (no backbone weights on disk)")),
        ("rFID", _fmt(row.get("rfid"), ".3f") + (f" (floor {_fmt(row.get('rfid_floor'), '.3f')})" if row.get("rfid") is not None
                                                 else f" ({(row.get('protocol') or {}).get('rfid') or 'no features'})")),
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
    return pairs


def run_reconstruction(args: argparse.Namespace) -> dict:
    check_split(args.data, args.split)
    torch.manual_seed(args.seed)
    rows = tradeoff(
        [args.tokenizer], data=args.data, n=args.n, seed=args.seed, features=args.features, out_dir=args.out,
        probe_cache=_probe_cache(args), batch_size=args.batch_size, lpips=not args.no_lpips, device=options.device(args),
        decoder=args.decoder, split=args.split, region=args.region,
    )
    region = next((row.pop("region") for row in rows if "region" in row), None)  # saved once, beside the rows
    print("\n".join(metric_lines(*rows)))
    if region is not None:
        print("\n".join(region_lines(region)))
    settings_ = settings(args.data, args.n, args.seed, args.features, rows[0]["image_size"], args.split)
    # "metrics": the tokenizer (at its full budget when promptable); "rows": every row printed
    # (a promptable tokenizer's budgets, the --decoder's reconstruction); "region": --region's study.
    full = rows[-1] if rows[0].get("curve") else rows[0]  # budgets come in rising order
    saved = {"settings": settings_, "metrics": full, "rows": rows} | ({} if region is None else {"region": region})
    path = write_json(saved, Path(args.out) / "reconstruction.json")
    print(f"wrote {path}")
    return rows[0]


# ----------------------------------------------------------------------------- generation


def run_generation(args: argparse.Namespace) -> list[dict]:
    check_split(args.data, args.split)
    torch.manual_seed(args.seed)
    scales = list(dict.fromkeys(args.cfg_scale))  # in the order given, each once
    samplings = [options.sampling(args, seed=args.seed, cfg_scale=scale) for scale in scales]  # checked before any work
    dev = options.device(args)
    pipe = Pipeline.load(args.generator, args.tokenizer, precision=args.dtype).to(dev)
    size = pipe.tokenizer.image_size
    bench = benchmark(args.data, args.n, size, seed=args.seed, features=args.features, cache_dir=args.out,
                      probe_dir=_probe_cache(args), split=args.split, diagnostic_n=args.diagnostic_n)
    if bench.features is not None:
        bench.features.to(dev)
    if len(samplings) > 1:  # a sweep: the real sets' features once, not once per scale
        bench = bench.precompute(args.batch_size)
    results = []
    for sampling in samplings:
        if len(samplings) > 1:
            print(f"cfg_scale {sampling.cfg_scale:g}")
        results.append(evaluate_generation(pipe, bench, sampling, batch_size=args.batch_size))
    protocol = {**bench.protocol, "sampling_seed": samplings[0].seed}
    text = generation_markdown(results, [f"cfg {s:g}" for s in scales] if len(results) > 1 else ["generated"], protocol)
    print(text)
    out = Path(args.out)
    files = [write_json({
        "settings": {**settings(args.data, args.n, args.seed, args.features, size, args.split),
                     "generator": str(args.generator), "tokenizer": str(args.tokenizer) if args.tokenizer else None},
        "protocol": protocol,
        "runs": [{"sampling": dataclasses.asdict(s), "metrics": {k: v for k, v in r.items() if k != "protocol"}}
                 for s, r in zip(samplings, results)],
    }, out / "generation.json"), atomic_write_bytes(out / "generation.md", (text + "\n").encode())]
    print("wrote " + ", ".join(str(f) for f in files))
    return results


def category_lines(results: list[dict], names: list[str], category: str) -> list[str]:
    """One Markdown table: a row per score of ``category``, a column per run, then real images
    (the floor or the ceiling: the same for every run); the novel pairs' scores after."""
    scored = [r["categories"][category] for r in results]
    first = scored[0]
    keys = [k for k in first if not k.endswith(("_floor", "_ceiling")) and k != "by_novel_pair"]
    rows = [[k, *(_fmt(s.get(k)) for s in scored), _fmt(real_score(first, k))] for k in keys]
    for pair, scores in first.get("by_novel_pair", {}).items():
        rows += [[f"{pair}: {k}", *(_fmt(s["by_novel_pair"][pair].get(k)) for s in scored), _fmt(real_score(scores, k))]
                 for k in scores if not k.endswith("_ceiling")]
    return _table(["", *names, "real images (floor / ceiling)"], rows)


def generation_markdown(results: list[dict], names: list[str], protocol: dict) -> str:
    """The protocol, then a table per category (the headline first), one column per run."""
    lines = ["# Generation evaluation", "", *protocol_lines(protocol), ""]
    for category in results[0]["categories"]:
        headline = " (headline)" if category == protocol.get("headline") else ""
        lines += [f"## {category}{headline}", "", *category_lines(results, names, category), ""]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, its cells padded to line up in a terminal."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


# ----------------------------------------------------------------------------- captioning


def run_captioning(args: argparse.Namespace) -> dict:
    check_split(args.data, args.split)
    sampling = options.caption_sampling(args)
    pipe = Pipeline.load(args.generator, args.tokenizer, precision=args.dtype).to(options.device(args))
    size = pipe.tokenizer.image_size
    contrastive = None if args.data == "shapes" else folder_contrastive(args.data, size, args.seed, args.out)[1]
    result = evaluate_captioning(pipe, args.data, args.n, size, args.seed, args.split, sampling, args.batch_size,
                                 contrastive)
    keys = ([f"caption_{a}_acc" for a in ("shape", "color", "size", "position")]
            + ["caption_object_acc", "caption_image_acc", "caption_parsed"] if args.data == "shapes"
            else ["clip_score", "clip_score_true"]) + ["caption_exact", "captions_per_s"]
    print("\n".join(f"{k}: {result[k]:.4g}" for k in keys))
    print("protocol: " + ", ".join(f"{k} {v}" for k, v in result["protocol"].items()))
    for example in result["examples"][:4]:
        print(f"  {example['caption']!r}  (true: {example['true']!r})")
    print(f"wrote {write_json({'generator': str(args.generator), **result}, Path(args.out) / 'captioning.json')}")
    return result


# ----------------------------------------------------------------------------- trade-off


def run_tradeoff(args: argparse.Namespace) -> list[dict]:
    check_split(args.data, args.split)
    torch.manual_seed(args.seed)
    rows = tradeoff(
        args.tokenizers, data=args.data, n=args.n, size=args.size, seed=args.seed, features=args.features,
        out_dir=args.out, probe_cache=_probe_cache(args), batch_size=args.batch_size, lpips=not args.no_lpips,
        device=options.device(args), split=args.split, bits_step_images=args.bits_step_images, region=args.region,
    )
    picture = reconstruction_picture(rows, args.data, Path(args.out) / "reconstructions.png", seed=args.seed,
                                     split=args.split, device=options.device(args))
    files = write_report(rows, args.out, settings=settings(args.data, args.n, args.seed, args.features, rows[0]["image_size"],
                                                           args.split), pictures=picture)
    print(markdown_table(rows, discrete_front(rows, "psnr")))
    print("* on the bits-vs-PSNR Pareto front")
    for row in rows:
        if "region" in row:
            print("\n".join([f"{row.get('curve') or row['tokenizer']}:", *region_lines(row["region"])]))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return rows
