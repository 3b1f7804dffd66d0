"""What the demo trains, for how long, and how it samples: one ``DemoPlan`` per size (``QUICK`` for
tests, ``STANDARD`` for ``make demo``, ``FULL`` for ``--full``); the standard schedules were chosen
by measurement (the numbers behind each choice: docs/experiments.md, bench/results/steps.json)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trilemma import registry
from trilemma.generators.sampling import SamplingConfig

PROMPTS = [
    "a large red circle at the top left",
    "a small blue square in the center",
    "a large green triangle at the bottom right",
    "a large yellow cross on the left and a small magenta circle on the right",
]

# Sampling for every generated image in the demo: guidance 3 lifted Parti's prompt adherence, at ~1.8x the cost.
SAMPLING = SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0)

# The editing example: redraw the top-left quarter of a held-out image (whole token cells at f4).
EDIT_BOX = (0.0, 0.0, 0.5, 0.5)
EDIT_PROMPT = "a large red circle at the top left"

# The trilemma study: a tokenizer of every family, by the name its run gets. "vq" is the token
# generators' tokenizer, "ae" the diffusion generator's and the promptable tokenizer's frozen base.
TOKENIZERS = {"vq": "vq-f4-shapes", "rvq": "rvq-f4-shapes", "fsq": "fsq-f4-shapes", "lfq": "lfq-f4-shapes",
              "ae": "ae-f4-shapes", "patch": "patch4-8bit", "promptable": "promptable-shapes"}
# One generator of each family, and the study tokenizer it trains on.
GENERATORS = {"dalle": "vq", "parti": "vq", "muse": "vq", "diffusion": "ae"}
# The models that train in fp32 (bf16 autocast slows them on a CPU: bench/results/steps.json); every other
# trains under bf16 autocast.
FP32 = frozenset({"diffusion", "promptable"})


@dataclass(frozen=True)
class DemoPlan:
    name: str
    pool: int  # shapes training images drawn once, shared by every tokenizer and generator
    tokenizer_steps: dict[str, int]  # per study tokenizer (batch 32); patch has nothing to learn
    tokenizer_lr: dict[str, float]  # peak learning rate per study tokenizer
    conv_tokenizer: dict  # overrides of the *-f4-shapes presets, for the study's conv tokenizers but "vq"
    generator_preset: str  # size suffix of every generator preset: "shapes" or "tiny"
    generator_arch: dict[str, dict]  # overrides of each family's preset
    generator_batch: dict[str, int]  # per family
    generator_steps: dict[str, int]  # per family
    generator_lr: dict[str, float]  # peak learning rate per family
    eval_images: int  # images per generation evaluation set
    study_images: int  # held-out images every study tokenizer reconstructs
    probe_steps: int
    rerank_n: int  # prompts in the rerank study
    rerank_candidates: int  # images drawn per prompt there
    contrastive_steps: int  # training steps of the rerank scorer (batch 128)
    contrastive_images: int  # the first images of the pool it trains on
    sampling: dict[str, SamplingConfig] = field(default_factory=dict)  # per family, where not SAMPLING

    def sampling_for(self, kind: str) -> SamplingConfig:
        """How family ``kind`` samples everywhere in the demo (its grid, evaluation, edits, reranking)."""
        return self.sampling.get(kind, SAMPLING)


# The study's conv tokenizers but the generators' VQ: no full-resolution ResNet blocks (a step 4x cheaper).
# The generators' VQ keeps the preset's widths: generators learn far worse on the lite VQ's tokens
# (docs/experiments.md, demo plan: model sizes).
LITE = {"channels": 32, "num_res_blocks": 0}

# The lite conv tokenizers take 2e-3; the generators' VQ and the promptable tokenizer their presets' recipes
# (Preset.recipe: what `trilemma train` uses by default).
_TOKENIZER_LR = {"rvq": 2e-3, "fsq": 2e-3, "lfq": 2e-3, "ae": 2e-3,
                 **{name: registry.get_preset("tokenizer", TOKENIZERS[name]).recipe["lr"] for name in ("vq", "promptable")}}
# The generators' widths in the standard and full demos: smaller than the presets, more steps a minute.
_DEMO_ARCH = {"dalle": {"dim": 192, "heads": 3}, "parti": {"dim": 192, "heads": 3}, "muse": {"dim": 128, "heads": 2},
              "diffusion": {"channels": (32, 64)}}

# DALL-E samples at temperature 0.5 (better adherence and FID than 1.0); Parti and Muse did not gain from it.
DALLE_SAMPLING = SamplingConfig(temperature=0.5, cfg_scale=3.0, seed=0)

# make demo: two one-thread workers (run.py), under 15 minutes; each schedule was measured run by run
# (docs/experiments.md, "Schedules, run by run"). The AE trains 600 steps so that diffusion (900) fills the
# second worker's idle time; the promptable tokenizer trains at batch 32 (at 16, whether it left the mean
# image in time varied from seed to seed).
STANDARD = DemoPlan(
    name="standard", pool=12256,
    tokenizer_steps={"vq": 600, "ae": 600, "rvq": 100, "fsq": 100, "lfq": 100, "promptable": 360},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="shapes",
    generator_arch=_DEMO_ARCH,
    generator_batch={"dalle": 16, "parti": 16, "muse": 32, "diffusion": 32},
    generator_steps={"dalle": 1200, "parti": 900, "muse": 800, "diffusion": 900},
    generator_lr={"dalle": 2e-3, "parti": 2e-3, "muse": 2e-3, "diffusion": 2e-3},
    eval_images=300, study_images=128, probe_steps=300, rerank_n=48, rerank_candidates=4, contrastive_steps=60,
    contrastive_images=4000, sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=10),
                                       "dalle": DALLE_SAMPLING},
)
QUICK = DemoPlan(
    name="quick", pool=768,
    tokenizer_steps={"vq": 60, "ae": 40, "rvq": 10, "fsq": 10, "lfq": 10, "promptable": 10},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="tiny", generator_arch={},
    generator_batch={"dalle": 16, "parti": 32, "muse": 64, "diffusion": 32},
    generator_steps={"dalle": 30, "parti": 30, "muse": 30, "diffusion": 20},
    generator_lr={"dalle": 2e-3, "parti": 1e-3, "muse": 2e-3, "diffusion": 1e-3},
    eval_images=64, study_images=64, probe_steps=60, rerank_n=8, rerank_candidates=2, contrastive_steps=10,
    contrastive_images=256,
    sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=4)},
)
# --full: the demo's model sizes, 3-13x its schedules and larger evaluation sets (37-41 minutes on a Xeon:
# docs/experiments.md, --full).
FULL = DemoPlan(
    name="full", pool=20256,
    tokenizer_steps={"vq": 2000, "ae": 2000, "rvq": 600, "fsq": 600, "lfq": 600, "promptable": 1600},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="shapes", generator_arch=_DEMO_ARCH,
    generator_batch={"dalle": 16, "parti": 16, "muse": 64, "diffusion": 32},
    generator_steps={"dalle": 4000, "parti": 3000, "muse": 1500, "diffusion": 2500},
    generator_lr={"dalle": 2e-3, "parti": 2e-3, "muse": 2e-3, "diffusion": 2e-3},
    eval_images=1000, study_images=500, probe_steps=600, rerank_n=256, rerank_candidates=8, contrastive_steps=400,
    contrastive_images=12000, sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=20),
                                        "dalle": DALLE_SAMPLING},
)
PLANS = {"quick": QUICK, "standard": STANDARD, "full": FULL}
