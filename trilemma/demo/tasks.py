"""The demo's tasks, one module-level function each, run on worker processes (``schedule.py``). A
task finds what earlier tasks made by its path under ``out`` (runs, the probe, the scorer); the
shared training pool and the evaluation benchmark are made once per worker. Each returns the
JSON-able numbers it measured."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trilemma import checkpoint, registry
from trilemma.data import InMemory, load_dataset
from trilemma.demo.plan import (CONV_FAMILIES, EDIT_BOX, EDIT_PROMPT, FP32, GENERATORS, PROMPTABLE_BASE, PROMPTS,
                                TOKENIZERS, Budget, DemoPlan)
from trilemma.images import save_grid
from trilemma.metrics.prompted import first_object_boxes, region_study
from trilemma.pipeline import Pipeline
from trilemma.studies.editing import edit_study, rerank_study
from trilemma.studies.captioning import evaluate_captioning
from trilemma.studies.generation import benchmark, evaluate_generation, reads_images
from trilemma.studies.report import write_report
from trilemma.studies.scorers import contrastive_scorer
from trilemma.studies.tradeoff import report_settings, settings, tradeoff
from trilemma.tokens import Prompt
from trilemma.training.generator import VAL_ITEMS, train_generator
from trilemma.training.loop import TrainConfig
from trilemma.training.tokenizer import train_tokenizer

_MADE: dict[tuple, object] = {}  # per worker process: the pool and the benchmark, made on first use


def _cfg(name: str, steps: int, batch: int, lr: float) -> TrainConfig:
    """Short runs of model ``name``: one evaluation at the end (the demo evaluates every model
    itself), a checkpoint halfway and at the end (an interrupted demo resumes its finished runs),
    under bf16 autocast unless the model is in ``FP32``."""
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=steps, save_every=max(1, steps // 2),
                       mixed_precision="no" if name in FP32 else "bf16")


def pool(plan: DemoPlan):
    """The ``plan.pool`` shapes training images every model trains on (drawn once per worker: the
    same images in each, as shapes items are a function of their index)."""
    key = ("pool", plan.pool)
    if key not in _MADE:
        _MADE[key] = InMemory(load_dataset("shapes", split="train", size=32), plan.pool)
    return _MADE[key]


def bench(out: Path, plan: DemoPlan, train_probe: bool = False):
    """The generation benchmark (``studies/benchmark.py``): ``plan.eval_images`` unseen prompts (the
    headline), and a third as many novel-pair and training prompts each (the benchmark's default:
    the diagnostics cost a third of the headline's sampling each), each with its reference, floor and
    probe ceiling; the probe cached in ``out/probe``. Only the probe task trains the probe, the others load it."""
    key = ("bench", str(out))
    if key not in _MADE:
        if not train_probe and not (out / "probe" / "model" / checkpoint.CONFIG_FILE).is_file():
            raise RuntimeError(f"the probe task has not trained {out / 'probe'} yet")
        _MADE[key] = benchmark("shapes", plan.eval_images, 32, cache_dir=out, probe_steps=plan.probe_steps,
                               probe_data=pool(plan) if train_probe else None)
    return _MADE[key]


def tokenizer_run(out: Path, name: str) -> Path:
    return out / "tokenizers" / name


def tokenizer(out: Path, plan: DemoPlan, name: str) -> dict:
    """Train (or resume, or keep) one tokenizer of ``TOKENIZERS`` on its budget (``plan.tokenizer_budget``:
    the study's conv families alike, the generators' ones and the promptable one on their own schedules);
    the promptable one over the generators' AE."""
    run, preset, budget = tokenizer_run(out, name), TOKENIZERS[name], plan.tokenizer_budget(name)
    started = (run / "model" / checkpoint.CONFIG_FILE).exists()
    if started and budget is None:
        print("nothing to do: raw patches have nothing to learn")
        return {}
    budget = budget or Budget(steps=1, lr=1e-3)  # raw patches: saved as a run like the others
    if started:
        _check_kept(run, budget)
    overrides = dict(budget.widths)
    if registry.get_preset("tokenizer", preset).model == "promptable":  # tokens over a continuous AE (trained first)
        overrides["base"] = str(tokenizer_run(out, PROMPTABLE_BASE) / "model")
    train_tokenizer(preset, "shapes", run, _cfg(name, budget.steps, budget.batch, budget.lr), overrides=overrides,
                    dataset=pool(plan), resume=started)  # a finished run is left as it is, a cut one continues
    return {"steps": budget.steps}


def _check_kept(run: Path, budget: Budget) -> None:
    """A run kept from an earlier demo must be the one this plan trains (an older plan's study VQ had the
    preset's widths and 600 steps): else it would sit in the table under another budget."""
    recorded = json.loads((run / "train_config.json").read_text())
    widths = checkpoint.read_config(run / "model")["config"]
    if ((recorded["steps"], recorded["batch_size"], recorded["lr"]) != (budget.steps, budget.batch, budget.lr)
            or any(widths.get(k) != v for k, v in budget.widths.items())):
        raise RuntimeError(f"{run} was trained {recorded['steps']} steps of {recorded['batch_size']} at lr "
                           f"{recorded['lr']:g}, not as this plan trains it ({budget.describe()}): run the demo "
                           f"into a new --out, or delete {run}")


def probe(out: Path, plan: DemoPlan) -> dict:
    """The evaluation probe (trained on the pool's ground truth) and the real images' grid."""
    b = bench(out, plan, train_probe=True)
    save_grid(b.floor[:16], out / "data.png", captions=b.prompts[:16])
    return {}


def study(out: Path, plan: DemoPlan) -> dict:
    """The trade-off rows of every study tokenizer (the promptable one per budget), the prompted
    region table, and the adherence ceiling of each generator's tokenizer."""
    b, n = bench(out, plan), plan.study_images
    rows = tradeoff([tokenizer_run(out, k) / "model" for k in plan.tokenizers()], "shapes", n=n, features="domain",
                    probe_cache=out / "probe", lpips=False, progress=False)
    for row in rows:  # how each was trained: the families alike, the generators' tokenizers marked as such
        row["trained"] = _trained(plan, Path(row["path"]).parent.name)
    protocol = {**settings("shapes", n, 0, "domain", 32), "study_budget": plan.study_budget.describe()}
    write_report(rows, out / "tradeoff", protocol, title="Trilemma study")
    _reconstruction_grid(out / "reconstructions.png", out, plan.tokenizers(), b.reference[:6])
    promptable = checkpoint.load(tokenizer_run(out, "promptable") / "model", kind="tokenizer")
    test = load_dataset("shapes", split="test", size=32)
    items = [test[i] for i in range(n)]
    k_max = promptable.spec.max_tokens
    region = region_study(promptable, b.reference[:n], first_object_boxes(items),
                          [k for k in (1, 2, 4, 8) if k <= k_max // 4] or [1])
    ceiling = {}
    for name in sorted({GENERATORS[g] for g in plan.generators}):
        tok = checkpoint.load(tokenizer_run(out, name) / "model", kind="tokenizer")
        with torch.no_grad():
            recon = torch.cat([tok.decode(tok.encode(x)).clamp(-1, 1) for x in b.floor.split(128)])
        # The probe on reconstructed real images: the adherence no generator on this tokenizer can beat.
        ceiling[name] = {f"adherence_{k}": v for k, v in b.probe.score(recon, b.attributes).items()}
    return {"rows": rows, "protocol": report_settings(protocol, rows), "region": region, "adherence_ceiling": ceiling}


def _trained(plan: DemoPlan, name: str) -> str:
    """The study table's cell for how tokenizer run ``name`` was trained."""
    budget = plan.tokenizer_budget(name)
    if name in CONV_FAMILIES:
        return "study budget"
    if budget is None:
        return "nothing to learn"
    if name in GENERATORS.values():
        return f"generators' tokenizer: {budget.steps} steps" + ("" if budget.widths else ", preset widths")
    return f"own recipe: {budget.steps} steps"


@torch.no_grad()
def _reconstruction_grid(path: Path, out: Path, names: list[str], images: torch.Tensor) -> None:
    """One row per study tokenizer (the promptable one at 4 tokens and at all of them) under the
    real images: what each corner of the trilemma keeps."""
    rows, captions = [images], ["real"] * len(images)
    for name in names:
        tok = checkpoint.load(tokenizer_run(out, name) / "model", kind="tokenizer")
        k_max = tok.spec.max_tokens
        for prompt, label in ([(Prompt(budget=4), f"{name} k=4"), (Prompt(budget=k_max), f"{name} k={k_max}")]
                              if getattr(tok, "promptable", False) else [(None, name)]):
            rows.append(tok.decode(tok.encode(images, prompt)).clamp(-1, 1).float())
            captions += [label] * len(images)
    save_grid(torch.cat(rows), path, captions=captions, nrow=len(images))


def generator(out: Path, plan: DemoPlan, kind: str) -> dict:
    """Train (or resume, or keep) one generator on its study tokenizer; its sample grid for
    ``PROMPTS`` and its scores on the benchmark."""
    run = out / kind
    cfg = _cfg(kind, plan.generator_steps[kind], plan.generator_batch[kind], plan.generator_lr[kind])
    train_generator(kind, tokenizer_run(out, GENERATORS[kind]), "shapes", run, cfg,
                    preset=f"{kind}-{plan.generator_preset}", num_images=plan.pool - VAL_ITEMS,
                    cache_dir=out / "token_cache", dataset=pool(plan),
                    resume=(run / "model" / checkpoint.CONFIG_FILE).exists(), overrides=plan.generator_arch.get(kind))
    pipe = Pipeline.load(run)
    sampling = plan.sampling_for(kind)
    captions = [p for p in PROMPTS for _ in range(4)]
    save_grid(pipe(captions, sampling), out / f"{kind}_samples.png", captions=captions, nrow=4)
    scores = evaluate_generation(pipe, bench(out, plan), sampling, progress=False)
    if reads_images(pipe):  # a model trained in both orders: its captions of held-out images too
        scores["captioning"] = evaluate_captioning(pipe, "shapes", plan.eval_images, progress=False)
    return scores


def contrastive(out: Path, plan: DemoPlan) -> dict:
    """The rerank scorer, trained on the first ``plan.contrastive_images`` of the pool."""
    _scorer(out, plan)
    return {}


def _scorer(out: Path, plan: DemoPlan):
    return contrastive_scorer(out / "contrastive", InMemory(pool(plan), plan.contrastive_images), steps=plan.contrastive_steps)


def editing(out: Path, plan: DemoPlan) -> dict:
    """Each token generator redraws ``EDIT_BOX`` of one held-out image; a grid of the image, its
    reconstruction and four edits per generator (diffusion draws continuous latents: no ids to keep)."""
    init = bench(out, plan).floor[:1]
    results, rows, captions = {}, [], []
    for kind in plan.generators:
        pipe = Pipeline.load(out / kind)
        if pipe.generator.spec.kind != "discrete":
            continue
        edit = edit_study(pipe, init, [EDIT_PROMPT] * 4, EDIT_BOX, plan.sampling_for(kind))
        results[kind] = {k: edit[k] for k in ("psnr_outside", "psnr_inside")}
        rows += [init.float(), edit["reconstruction"], edit["edited"]]
        captions += ["held-out image", "its reconstruction"] + [f"{kind} edit"] * 4
    save_grid(torch.cat(rows), out / "editing.png", captions=captions, nrow=6)
    return results


def rerank(out: Path, plan: DemoPlan) -> dict:
    """DALL-E draws ``rerank_candidates`` images for each of ``rerank_n`` prompts and keeps the best
    by the contrastive score."""
    return rerank_study(Pipeline.load(out / "dalle"), bench(out, plan), _scorer(out, plan), plan.rerank_candidates,
                        plan.rerank_n, plan.sampling_for("dalle"))
