"""The main job, end to end on the embedded shapes dataset, in stages that each print their time:
a tokenizer of every family placed on one trade-off table (the trilemma study), one generator of
each family trained on the tokenizer it suits and evaluated on the same prompts, an editing example,
a rerank study, and ``report.md`` / ``report.html`` with every table and picture."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from trilemma import checkpoint
from trilemma.demo.plan import EDIT_BOX, EDIT_PROMPT, GENERATORS, PLANS, PROMPTS, SAMPLING, TOKENIZERS, DemoPlan
from trilemma.demo.report import write_demo_report
from trilemma.training.loop import TrainConfig

STAGES = 7


def _cfg(steps: int, batch: int, lr: float) -> TrainConfig:
    """Short runs: one evaluation at the end (the demo evaluates every model itself), a checkpoint
    halfway and at the end (an interrupted demo resumes its finished runs)."""
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=steps, save_every=max(1, steps // 2),
                       mixed_precision="bf16")


class _Clock:
    """Per-stage wall times, printed as each stage ends."""

    def __init__(self) -> None:
        self.t0, self.timings = time.perf_counter(), {}

    def stage(self, i: int, name: str) -> None:
        print(f"[demo] {i}/{STAGES} {name}", flush=True)

    def lap(self, name: str) -> None:
        self.timings[name] = time.perf_counter() - self.t0 - sum(self.timings.values())
        print(f"[demo] {name} done in {self.timings[name]:.0f} s ({self.total():.0f} s so far)", flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.t0


def run_demo(out: Path, plan: str | DemoPlan = "standard") -> Path:
    """Run the demo into ``out`` and return report.md. Rerun into the same ``out``, finished
    trainings are kept and interrupted ones resume from their last checkpoint."""
    from trilemma.data import InMemory, load_dataset
    from trilemma.eval.generation import benchmark
    from trilemma.images import save_grid

    plan = PLANS[plan] if isinstance(plan, str) else plan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()

    clock.stage(1, f"shapes: {plan.pool} training images drawn once, shared by every model")
    pool = InMemory(load_dataset("shapes", split="train", size=32), plan.pool)
    clock.lap("data")

    clock.stage(2, "tokenizers: " + ", ".join(TOKENIZERS))
    runs = _train_tokenizers(out, plan, pool, clock)

    clock.stage(3, "evaluation probe and features (trained once on shapes ground truth)")
    bench = benchmark("shapes", plan.eval_images, 32, cache_dir=out, probe_steps=plan.probe_steps, probe_data=pool)
    save_grid(bench.floor[:16], out / "data.png", captions=bench.prompts[:16])
    clock.lap("probe")

    clock.stage(4, "trilemma study: every tokenizer on the same held-out images")
    study = _study(out, runs, bench, plan.study_images)
    clock.lap("trilemma study")

    clock.stage(5, "generators: " + ", ".join(f"{g} on {t}" for g, t in GENERATORS.items()))
    generation, pipes = _train_generators(out, plan, pool, runs, bench, clock)

    clock.stage(6, "editing and reranking")
    editing, rerank = _edit_and_rerank(pipes, bench.floor[:1], bench, plan, pool, out)
    clock.lap("editing + reranking")

    clock.stage(7, "report")
    results = {"plan": plan.name, "study": study, "generation": generation, "editing": editing, "rerank": rerank,
               "timings_s": clock.timings, "total_s": clock.total()}
    report, page = write_demo_report(out, results, plan)
    print(f"[demo] finished in {clock.total():.0f} s; report: {report} and {page}")
    return report


def _train_tokenizers(out: Path, plan: DemoPlan, pool, clock: _Clock) -> dict[str, Path]:
    """Train (or reuse) each study tokenizer; {name: run directory}."""
    from trilemma import registry
    from trilemma.training.tokenizer import train_tokenizer

    runs = {}
    for name, preset in TOKENIZERS.items():
        run = runs[name] = out / "tokenizers" / name
        started = (run / "model" / checkpoint.CONFIG_FILE).exists()
        if started and name not in plan.tokenizer_steps:
            continue  # nothing to learn (raw patches): saved once
        model = registry.get_preset("tokenizer", preset).model
        overrides = dict(plan.conv_tokenizer) if model == "vqvae" and name != "vq" else {}
        if model == "promptable":  # tokens over the study's continuous autoencoder (trained first)
            overrides["base"] = str(runs["ae"] / "model")
        steps = plan.tokenizer_steps.get(name, 1)
        train_tokenizer(preset, "shapes", run, _cfg(steps, 32, plan.tokenizer_lr.get(name, 1e-3)), overrides=overrides,
                        dataset=pool, resume=started)  # a finished run is left as it is, a cut one continues
        clock.lap(f"tokenizer {name}")
    return runs


def _study(out: Path, runs: dict[str, Path], bench, n: int) -> dict:
    """The trade-off rows of every study tokenizer (the promptable one per budget), the prompted
    region table, and the adherence ceiling of each generator's tokenizer."""
    from trilemma.data import load_dataset
    from trilemma.eval.prompted import first_object_boxes, region_study
    from trilemma.eval.report import write_report
    from trilemma.eval.tradeoff import settings, tradeoff

    rows = tradeoff([runs[k] / "model" for k in TOKENIZERS], "shapes", n=n, features="domain", probe_cache=out / "probe",
                    lpips=False, progress=False)
    write_report(rows, out / "tradeoff", settings("shapes", n, 0, "domain", 32), title="Trilemma study")
    _reconstruction_grid(out / "reconstructions.png", runs, bench.reference[:6])
    promptable = checkpoint.load(runs["promptable"] / "model", kind="tokenizer")
    test = load_dataset("shapes", split="test", size=32)
    items = [test[i] for i in range(n)]
    k_max = promptable.spec.max_tokens
    region = region_study(promptable, bench.reference[:n], first_object_boxes(items), [k for k in (1, 2, 4, 8) if k <= k_max // 4] or [1])
    ceiling = {}
    for name in sorted(set(GENERATORS.values())):
        tok = checkpoint.load(runs[name] / "model", kind="tokenizer")
        with torch.no_grad():
            recon = torch.cat([tok.decode(tok.encode(x)).clamp(-1, 1) for x in bench.floor.split(128)])
        # The probe on reconstructed real images: the adherence no generator on this tokenizer can beat.
        ceiling[name] = {f"adherence_{k}": v for k, v in bench.probe.score(recon, bench.attributes).items()}
    return {"rows": rows, "region": region, "adherence_ceiling": ceiling}


@torch.no_grad()
def _reconstruction_grid(path: Path, runs: dict[str, Path], images: torch.Tensor) -> None:
    """One row per study tokenizer (the promptable one at 4 tokens and at all of them) under the
    real images: what each corner of the trilemma keeps."""
    from trilemma.images import save_grid
    from trilemma.tokens import Prompt

    rows, captions = [images], ["real"] * len(images)
    for name, run in runs.items():
        tok = checkpoint.load(run / "model", kind="tokenizer")
        k_max = tok.spec.max_tokens
        for prompt, label in ([(Prompt(budget=4), f"{name} k=4"), (Prompt(budget=k_max), f"{name} k={k_max}")]
                              if getattr(tok, "promptable", False) else [(None, name)]):
            rows.append(tok.decode(tok.encode(images, prompt)).clamp(-1, 1).float())
            captions += [label] * len(images)
    save_grid(torch.cat(rows), path, captions=captions, nrow=len(images))


def _train_generators(out: Path, plan: DemoPlan, pool, runs: dict[str, Path], bench, clock: _Clock) -> tuple[dict, dict]:
    from trilemma.eval.generation import evaluate_generation
    from trilemma.images import save_grid
    from trilemma.pipeline import Pipeline
    from trilemma.training.generator import VAL_ITEMS, train_generator

    results, pipes = {}, {}
    captions = [p for p in PROMPTS for _ in range(4)]
    for kind, tok_name in GENERATORS.items():
        run = out / kind
        cfg = _cfg(plan.generator_steps[kind], plan.generator_batch[kind], plan.generator_lr[kind])
        train_generator(kind, runs[tok_name], "shapes", run, cfg, preset=f"{kind}-{plan.generator_preset}",
                        num_images=plan.pool - VAL_ITEMS, cache_dir=out / "token_cache", dataset=pool,
                        resume=(run / "model" / checkpoint.CONFIG_FILE).exists(), **plan.generator_arch.get(kind, {}))
        pipe = pipes[kind] = Pipeline.load(run)
        sampling = plan.sampling.get(kind, SAMPLING)
        save_grid(pipe(captions, sampling), out / f"{kind}_samples.png", captions=captions, nrow=4)
        results[kind] = evaluate_generation(pipe, bench, sampling, progress=False)
        clock.lap(f"generator {kind}")
    return results, pipes


def _edit_and_rerank(pipes: dict, init: torch.Tensor, bench, plan: DemoPlan, pool, out: Path) -> tuple[dict, dict]:
    """Each token generator redraws ``EDIT_BOX`` of one held-out image (a grid: the image, its
    reconstruction, four edits per generator); DALL-E draws ``rerank_candidates`` images for each of
    ``rerank_n`` prompts and keeps the best by the contrastive score (trained on part of ``pool``)."""
    from trilemma.data import InMemory
    from trilemma.eval.contrastive import load_or_train_contrastive
    from trilemma.eval.editing import edit_study, rerank_study
    from trilemma.images import save_grid

    editing, rows, captions = {}, [], []
    for kind, pipe in pipes.items():
        if pipe.generator.spec.kind != "discrete":
            continue  # diffusion draws continuous latents: there are no ids to keep
        study = edit_study(pipe, init, [EDIT_PROMPT] * 4, EDIT_BOX, SAMPLING)
        editing[kind] = {k: study[k] for k in ("psnr_outside", "psnr_inside")}
        rows += [init.float(), study["reconstruction"], study["edited"]]
        captions += ["held-out image", "its reconstruction"] + [f"{kind} edit"] * 4
    save_grid(torch.cat(rows), out / "editing.png", captions=captions, nrow=6)
    scorer = load_or_train_contrastive(InMemory(pool, plan.contrastive_images), out / "contrastive", steps=plan.contrastive_steps)
    rerank = rerank_study(pipes["dalle"], bench, scorer, plan.rerank_candidates, plan.rerank_n, SAMPLING)
    return editing, rerank
