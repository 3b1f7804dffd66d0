"""The main job, end to end on the embedded shapes dataset: train a tokenizer, train a DALL-E and a
Parti generator on its tokens, generate for fixed prompts, evaluate reconstruction and generation,
and write ``report.md`` with the tables and pictures. ``quick`` is a ~2 minute smoke version."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trilemma import checkpoint
from trilemma.eval.html import write_html
from trilemma.files import atomic_write_bytes
from trilemma.generators.sampling import SamplingConfig
from trilemma.training.loop import TrainConfig

PROMPTS = [
    "a large red circle at the top left",
    "a small blue square in the center",
    "a large green triangle at the bottom right",
    "a large yellow cross on the left and a small magenta circle on the right",
]


# Sampling for every generated image in the demo: guidance 3 lifted parti's per-attribute prompt
# accuracy from 72-96% to 84-99% at 700 steps (shape is the hardest attribute), at ~1.8x the cost.
SAMPLING = SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0)


@dataclass(frozen=True)
class DemoPlan:
    tokenizer_steps: int
    generator_steps: dict[str, int]  # steps per generator kind (batch 64)
    generator_lr: dict[str, float]  # peak learning rate per generator kind (batch 64)
    num_images: int  # generator training images
    eval_images: int  # images per evaluation set
    probe_steps: int
    generator_preset: str  # size suffix: "shapes" or "tiny"
    rerank_n: int  # prompts in the rerank study
    rerank_candidates: int  # images drawn per prompt there
    contrastive_steps: int  # training steps of the rerank scorer (batch 128)
    contrastive_images: int  # the images it trains on, drawn once


# The tokenizer needs about 800 steps: at 500 (29 dB) the probe read only 74% of the shapes in its
# reconstructions, capping every generator; at 800 (36 dB), 99%. Each stage's time is in the report.
# Editing and reranking cost 100 s (81 of them drawing the contrastive scorer's batches on the
# fly), so the scorer trains on a pool drawn once, for 100 steps (50 s for the stage). Shorter
# schedules elsewhere were measured and dropped: tokenizer 720 steps (33.6 dB), probe 320, DALL-E
# 290 and one evaluation per run gave DALL-E shape / colour 35 / 55% (45 / 65% here) and Parti
# 15 / 31% (26 / 66%): Parti at lr 1e-3 sits at the edge of stability and the changed run collapsed.
# Short generator schedules want a high peak rate: DALL-E at 400 steps, cfg 3, read shape / colour
# 34 / 54% at 5e-4, 46 / 64% at 1e-3, 50 / 68% at 2e-3. Parti at 320 steps: 26 / 45% at 5e-4,
# 26 / 67% at 1e-3 (the demo's own 500-image score; the others on 300), 10 / 25% at 2e-3 (unstable).
STANDARD = DemoPlan(tokenizer_steps=800, generator_steps={"dalle": 320, "parti": 320},
                    generator_lr={"dalle": 2e-3, "parti": 1e-3}, num_images=12000, eval_images=500, probe_steps=400,
                    generator_preset="shapes", rerank_n=96, rerank_candidates=4, contrastive_steps=100,
                    contrastive_images=4000)
QUICK = DemoPlan(tokenizer_steps=60, generator_steps={"dalle": 40, "parti": 40}, generator_lr={"dalle": 2e-3, "parti": 1e-3},
                 num_images=512, eval_images=64, probe_steps=60, generator_preset="tiny", rerank_n=8, rerank_candidates=2,
                 contrastive_steps=10, contrastive_images=256)

# The editing example: redraw the top-left quarter of a held-out image (whole token cells at f4).
EDIT_BOX = (0.0, 0.0, 0.5, 0.5)
EDIT_PROMPT = "a large red circle at the top left"


def _cfg(steps: int, batch: int, lr: float) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=max(1, steps // 2), save_every=max(1, steps // 2),
                       mixed_precision="bf16")


def run_demo(out: Path, quick: bool = False) -> Path:
    from trilemma.eval.generation import benchmark, evaluate_generation
    from trilemma.eval.reconstruction import evaluate_reconstruction
    from trilemma.images import save_grid
    from trilemma.pipeline import Pipeline
    from trilemma.training.generator import train_generator
    from trilemma.training.tokenizer import train_tokenizer

    plan = QUICK if quick else STANDARD
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - t0 - sum(timings.values())
        print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)

    print("[demo] 1/6 tokenizer (vq-f4-shapes)", flush=True)
    tok_run = out / "tokenizer"
    if not (tok_run / "model" / checkpoint.CONFIG_FILE).exists():
        train_tokenizer("vq-f4-shapes", "shapes", tok_run, _cfg(plan.tokenizer_steps, 32, 1e-3))
    lap("tokenizer")

    print("[demo] 2/6 evaluation probe and features (trained once on shapes ground truth)", flush=True)
    bench = benchmark("shapes", plan.eval_images, 32, cache_dir=out, probe_steps=plan.probe_steps)
    probe, real, floor, prompts = bench.probe, bench.reference, bench.floor, bench.prompts
    save_grid(floor[:16], out / "data.png", captions=prompts[:16])
    lap("probe")

    print("[demo] 3/6 reconstruction", flush=True)
    tokenizer = checkpoint.load(tok_run / "model", kind="tokenizer")
    recon = evaluate_reconstruction(tokenizer, real, features=probe.features)
    attributes = bench.attributes
    with torch.no_grad():
        floor_recon = torch.cat([tokenizer.decode(tokenizer.encode(x)).clamp(-1, 1) for x in floor.split(128)])
    # The probe on reconstructed real images: the adherence no generator on this tokenizer can beat.
    ceiling = {f"adherence_{k}": v for k, v in probe.score(floor_recon, attributes).items()}
    lap("reconstruction eval")

    results = {"reconstruction": recon, "adherence_ceiling": ceiling, "generation": {}, "editing": {}}
    pipes = {}
    for kind in ("dalle", "parti"):
        print(f"[demo] 4/6 generator {kind}", flush=True)
        run = out / kind
        if not (run / "model" / checkpoint.CONFIG_FILE).exists():
            train_generator(kind, tok_run, "shapes", run, _cfg(plan.generator_steps[kind], 64, plan.generator_lr[kind]),
                            preset=f"{kind}-{plan.generator_preset}", num_images=plan.num_images,
                            cache_dir=out / "token_cache")
        pipe = pipes[kind] = Pipeline.load(run)
        grid = pipe([p for p in PROMPTS for _ in range(4)], SAMPLING)
        save_grid(grid, out / f"{kind}_samples.png", captions=[p for p in PROMPTS for _ in range(4)], nrow=4)
        results["generation"][kind] = evaluate_generation(pipe, bench, SAMPLING)
        lap(f"{kind} train+eval")

    print("[demo] 5/6 editing and reranking", flush=True)
    results["editing"], results["rerank"] = _edit_and_rerank(pipes, floor[:1], bench, plan, out)
    lap("editing + reranking")

    print("[demo] 6/6 report", flush=True)
    results["timings_s"] = timings
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=float) + "\n").encode())
    report = atomic_write_bytes(out / "report.md", _report(results, plan, quick).encode())
    page = write_html(report)
    print(f"[demo] finished in {time.perf_counter() - t0:.0f} s; report: {report} and {page}")
    return report


def _edit_and_rerank(pipes: dict, init: torch.Tensor, bench, plan: DemoPlan, out: Path) -> tuple[dict, dict]:
    """Each generator redraws ``EDIT_BOX`` of one held-out image (a grid: the image, its
    reconstruction, four edits per generator); DALL-E draws ``rerank_candidates`` images for each of
    ``rerank_n`` prompts and keeps the best by the contrastive score."""
    from trilemma.data import InMemory, load_dataset
    from trilemma.eval.contrastive import load_or_train_contrastive
    from trilemma.eval.editing import edit_study, rerank_study
    from trilemma.images import save_grid

    editing, rows, captions = {}, [], []
    for kind, pipe in pipes.items():
        study = edit_study(pipe, init, [EDIT_PROMPT] * 4, EDIT_BOX, SAMPLING)
        editing[kind] = {k: study[k] for k in ("psnr_outside", "psnr_inside")}
        rows += [init.float(), study["reconstruction"], study["edited"]]
        captions += ["held-out image", "its reconstruction"] + [f"{kind} edit"] * 4
    save_grid(torch.cat(rows), out / "editing.png", captions=captions, nrow=6)
    pool = InMemory(load_dataset("shapes", split="train", size=init.shape[-1]), plan.contrastive_images)
    scorer = load_or_train_contrastive(pool, out / "contrastive", steps=plan.contrastive_steps)
    rerank = rerank_study(pipes["dalle"], bench, scorer, plan.rerank_candidates, plan.rerank_n, SAMPLING)
    return editing, rerank


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _report(results: dict, plan: DemoPlan, quick: bool) -> str:
    r = results["reconstruction"]
    lines = [
        "# trilemma demo" + (" (quick)" if quick else ""),
        "",
        f"Shapes 32x32. Tokenizer `vq-f4-shapes` trained {plan.tokenizer_steps} steps; generators trained "
        + ", ".join(f"{k} {v}" for k, v in plan.generator_steps.items()) + " steps of batch 64 (peak lr "
        + ", ".join(f"{k} {v:g}" for k, v in plan.generator_lr.items())
        + f") on {plan.num_images} images; evaluation on {plan.eval_images} held-out test images. "
        f"Sampling: temperature {SAMPLING.temperature:g}, guidance {SAMPLING.cfg_scale:g}, seed {SAMPLING.seed}.",
        "",
        "![data](data.png)",
        "",
        "## Reconstruction (held-out test set)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in r.items()],
        "",
        "## Generation",
        "",
    ]
    gens = results["generation"]
    keys = list(next(iter(gens.values())).keys()) if gens else []
    ceiling = results.get("adherence_ceiling", {})
    lines += ["| metric | " + " | ".join(gens) + " | ceiling |", "|---|" + "---|" * (len(gens) + 1)]
    lines += [f"| {k} | " + " | ".join(_fmt(gens[g][k]) for g in gens) + f" | {_fmt(ceiling.get(k))} |" for k in keys]
    lines += ["", "Floors (`*_floor`) are the same score between two disjoint sets of real images (the prompts are the "
              "floor images' captions). The ceiling is the probe's adherence on the tokenizer's reconstructions of "
              "those real images: what a perfect generator on this tokenizer would score.", ""]
    for kind in gens:
        lines += [f"### {kind}", "", f"![{kind}]({kind}_samples.png)", ""]
    lines += ["## Editing", "", f"`trilemma generate \"{EDIT_PROMPT}\" --init IMAGE --box "
              + ",".join(f"{v:g}" for v in EDIT_BOX) + "`: the token cells under the box are drawn anew, every other "
              "token is kept. PSNR against the image's own reconstruction (dB; outside the box an edit should change "
              "nothing, so only what the decoder spreads across the box edge counts):", "",
              "| generator | PSNR outside the box | PSNR inside |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['psnr_outside'])} | {_fmt(v['psnr_inside'])} |" for k, v in results["editing"].items()]
    lines += ["", "![editing](editing.png)", ""]
    rr = results["rerank"]
    lines += ["## Reranking", "", f"DALL-E, {rr['n']} benchmark prompts at the same seed: one image each, and the best of "
              f"{rr['candidates']} by the contrastive text-image score (`--rerank {rr['candidates']}`).", "",
              "| adherence | one sample | best of " + str(rr["candidates"]) + " |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(rr['plain'][k])} | {_fmt(rr['reranked'][k])} |" for k in rr["plain"]]
    lines += [f"| contrastive score | {_fmt(rr['score_plain'])} | {_fmt(rr['score_reranked'])} |", ""]
    lines += ["## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["timings_s"].items()]
    return "\n".join(lines) + "\n"
