"""What the demo trains, for how long, and how it samples: one ``DemoPlan`` per size (``QUICK`` for
tests, ``STANDARD`` for ``make demo``, ``FULL`` for ``--full``), each schedule chosen by measurement
(the numbers behind each choice are in the comments and in ``bench/results/steps.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trilemma.generators.sampling import SamplingConfig

PROMPTS = [
    "a large red circle at the top left",
    "a small blue square in the center",
    "a large green triangle at the bottom right",
    "a large yellow cross on the left and a small magenta circle on the right",
]

# Sampling for every generated image in the demo: guidance 3 lifted parti's per-attribute prompt
# accuracy from 72-96% to 84-99% at 700 steps (shape is the hardest attribute), at ~1.8x the cost.
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


@dataclass(frozen=True)
class DemoPlan:
    name: str
    pool: int  # shapes training images drawn once, shared by every tokenizer and generator
    tokenizer_steps: dict[str, int]  # per study tokenizer (batch 32); patch has nothing to learn
    tokenizer_lr: dict[str, float]  # peak learning rate per study tokenizer
    conv_tokenizer: dict  # overrides of the *-f4-shapes presets, for every conv tokenizer of the study
    generator_preset: str  # size suffix of every generator preset: "shapes" or "tiny"
    generator_arch: dict[str, dict]  # overrides of each family's preset
    generator_steps: dict[str, int]  # per family (batch 64)
    generator_lr: dict[str, float]  # peak learning rate per family (batch 64)
    eval_images: int  # images per evaluation set
    probe_steps: int
    rerank_n: int  # prompts in the rerank study
    rerank_candidates: int  # images drawn per prompt there
    contrastive_steps: int  # training steps of the rerank scorer (batch 128)
    contrastive_images: int  # the images it trains on, drawn once
    sampling: dict[str, SamplingConfig] = field(default_factory=dict)  # per family, where not SAMPLING


# Tokenizers: the presets' full-resolution ResNet blocks cost 80% of a step. Without them
# (channels 32, num_res_blocks 0: 0.08 s a step of 32 against 0.35 s), vq-f4 reached 36.3 dB in
# 1600 steps and 203 s, where the preset reached 35.9 dB in 800 steps and 333 s.
LITE = {"channels": 32, "num_res_blocks": 0}

# The conv tokenizers take 2e-3 (lite vq-f4: 36.3 dB at 1600 steps); the promptable one 1e-3 (its
# measured run on the base autoencoder).
_TOKENIZER_LR = {"vq": 2e-3, "rvq": 2e-3, "fsq": 2e-3, "lfq": 2e-3, "ae": 2e-3, "promptable": 1e-3}

STANDARD = DemoPlan(
    name="standard", pool=12256,
    tokenizer_steps={"vq": 1200, "ae": 800, "rvq": 300, "fsq": 300, "lfq": 300, "promptable": 150},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="shapes",
    generator_arch={k: {"dim": 128, "heads": 2} for k in ("dalle", "parti", "muse")} | {"diffusion": {}},
    generator_steps={"dalle": 400, "parti": 400, "muse": 400, "diffusion": 250},
    generator_lr={"dalle": 2e-3, "parti": 2e-3, "muse": 2e-3, "diffusion": 1e-3},
    eval_images=500, probe_steps=400, rerank_n=96, rerank_candidates=4, contrastive_steps=100,
    contrastive_images=4000, sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=10)},
)
QUICK = DemoPlan(
    name="quick", pool=768,
    tokenizer_steps={"vq": 60, "ae": 40, "rvq": 10, "fsq": 10, "lfq": 10, "promptable": 10},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="tiny", generator_arch={},
    generator_steps={"dalle": 30, "parti": 30, "muse": 30, "diffusion": 20},
    generator_lr={"dalle": 2e-3, "parti": 1e-3, "muse": 2e-3, "diffusion": 1e-3},
    eval_images=64, probe_steps=60, rerank_n=8, rerank_candidates=2, contrastive_steps=10, contrastive_images=256,
    sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=4)},
)
# --full: the presets' widths and long schedules, where the generators approach the probe's ceiling
# (Parti at dim 256 and 700 steps read 84-99% per attribute). Projected from the measured step costs
# (bench/results/steps.json): tokenizers ~30 min, generators ~70 min, evaluation ~5 min.
FULL = DemoPlan(
    name="full", pool=20256,
    tokenizer_steps={"vq": 3000, "ae": 2000, "rvq": 1500, "fsq": 1500, "lfq": 1500, "promptable": 1600},
    tokenizer_lr=_TOKENIZER_LR, conv_tokenizer=LITE, generator_preset="shapes", generator_arch={},
    generator_steps={"dalle": 1500, "parti": 1500, "muse": 1500, "diffusion": 2000},
    generator_lr={"dalle": 1e-3, "parti": 5e-4, "muse": 1e-3, "diffusion": 1e-3},
    eval_images=1000, probe_steps=600, rerank_n=256, rerank_candidates=8, contrastive_steps=400,
    contrastive_images=12000,
)
PLANS = {"quick": QUICK, "standard": STANDARD, "full": FULL}
