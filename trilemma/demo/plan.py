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

# The trilemma study: a tokenizer of every family, by the name its run gets. The conv families (a plan's study, of CONV_FAMILIES)
# train alike, on the plan's ``study_budget``, so that the quantizer is all that differs between them. "vq-gen" and
# "ae-gen" are the generators' tokenizers, each on its own schedule (``own_budgets``): the token generators'
# VQ at the preset's widths, the diffusion generator's AE (also the promptable tokenizer's frozen base).
TOKENIZERS = {"vq": "vq-f4-shapes", "rvq": "rvq-f4-shapes", "fsq": "fsq-f4-shapes", "lfq": "lfq-f4-shapes",
              "msvq": "msvq-f4-shapes", "ae": "ae-f4-shapes", "patch": "patch4-8bit", "promptable": "promptable-shapes",
              "vq-gen": "vq-f4-shapes", "ae-gen": "ae-f4-shapes", "msvq-gen": "msvq-f4-shapes"}
CONV_FAMILIES = ("vq", "rvq", "fsq", "lfq", "msvq", "ae")
PROMPTABLE_BASE = "ae-gen"
# One generator of each family, and the tokenizer it trains on (a plan trains those of ``DemoPlan.generators``).
GENERATORS = {"dalle": "vq-gen", "parti": "vq-gen", "muse": "vq-gen", "diffusion": "ae-gen", "var": "msvq-gen",
              "mar": "ae-gen"}
GENERATOR_TOKENIZERS = frozenset(GENERATORS.values())
# The models that train in fp32 (bf16 autocast slows them on a CPU: bench/results/steps.json); every other
# trains under bf16 autocast.
FP32 = frozenset({"diffusion", "promptable", "mar"})


@dataclass(frozen=True)
class Budget:
    """How a tokenizer trains: ``steps`` of ``batch`` images at peak learning rate ``lr``, with
    ``widths`` over its preset's (e.g. ``LITE``; empty: the preset's own)."""

    steps: int
    lr: float
    batch: int = 32
    widths: dict = field(default_factory=dict)

    def describe(self) -> str:
        widths = ", ".join(f"{k} {v}" for k, v in self.widths.items()) or "the preset's widths"
        return f"{self.steps} steps of {self.batch} at lr {self.lr:g}, {widths}"


@dataclass(frozen=True)
class DemoPlan:
    name: str
    pool: int  # shapes training images drawn once, shared by every tokenizer and generator
    study_budget: Budget  # every one of its study's conv families, alike
    own_budgets: dict[str, Budget]  # "vq-gen", "ae-gen" and the promptable tokenizer: their own schedules
    generator_preset: str  # size suffix of every generator preset: "shapes" or "tiny"
    generator_arch: dict[str, dict]  # overrides of each family's preset
    generator_batch: dict[str, int]  # per family
    generator_steps: dict[str, int]  # per family
    generator_lr: dict[str, float]  # peak learning rate per family
    eval_images: int  # images per generation evaluation set
    study_images: int  # held-out images every study tokenizer reconstructs (rFID only above the features' 256 dims)
    probe_steps: int
    rerank_n: int  # prompts in the rerank study
    rerank_candidates: int  # images drawn per prompt there
    contrastive_steps: int  # training steps of the rerank scorer (batch 128)
    contrastive_images: int  # the first images of the pool it trains on
    sampling: dict[str, SamplingConfig] = field(default_factory=dict)  # per family, where not SAMPLING
    generators: tuple[str, ...] = tuple(GENERATORS)  # the families this plan trains (keys of GENERATORS)
    study: tuple[str, ...] = CONV_FAMILIES  # the conv families its study trains alike

    def tokenizers(self) -> list[str]:
        """The runs of ``TOKENIZERS`` this plan trains: its study's, and the generators' tokenizers its
        ``generators`` (and the promptable tokenizer's base) need."""
        needed = {GENERATORS[g] for g in self.generators} | {PROMPTABLE_BASE}
        return [n for n in TOKENIZERS if (n not in GENERATOR_TOKENIZERS or n in needed)
                and (n not in CONV_FAMILIES or n in self.study)]

    def tokenizer_budget(self, name: str) -> Budget | None:
        """How tokenizer ``name`` of ``TOKENIZERS`` trains; None for raw patches (nothing to learn)."""
        return self.study_budget if name in CONV_FAMILIES else self.own_budgets.get(name)

    def sampling_for(self, kind: str) -> SamplingConfig:
        """How family ``kind`` samples everywhere in the demo (its grid, evaluation, edits, reranking)."""
        return self.sampling.get(kind, SAMPLING)


# The study's conv families and the generators' AE: no full-resolution ResNet blocks (a step 4x cheaper), at lr 2e-3.
# The generators' VQ keeps the preset's widths: generators learn far worse on the lite VQ's tokens
# (docs/experiments.md, demo plan: model sizes).
LITE = {"channels": 32, "num_res_blocks": 0}
LITE_LR = 2e-3


def _own(name: str, steps: int) -> Budget:
    """The generators' VQ and the promptable tokenizer: their presets' widths and learning rates (Preset.recipe:
    what `trilemma train` uses by default); the generators' AE: lite, as the study's families."""
    if name == "ae-gen":
        return Budget(steps, LITE_LR, widths=LITE)
    return Budget(steps, registry.get_preset("tokenizer", TOKENIZERS[name]).recipe["lr"])


# The generators' widths in the standard and full demos: smaller than the presets, more steps a minute.
_DEMO_ARCH = {"dalle": {"dim": 192, "heads": 3}, "parti": {"dim": 192, "heads": 3}, "muse": {"dim": 128, "heads": 2},
              "diffusion": {"channels": (32, 64)}, "var": {"dim": 192, "heads": 3},
              "mar": {"width": 192, "heads": 3, "head_width": 192}}

# DALL-E samples at temperature 0.5 (better adherence and FID than 1.0); Parti and Muse did not gain from it.
DALLE_SAMPLING = SamplingConfig(temperature=0.5, cfg_scale=3.0, seed=0)

# make demo: two one-thread workers (run.py), under 15 minutes; each schedule was measured run by run
# (docs/experiments.md, "Schedules, run by run"). The generators' AE trains 600 steps so that diffusion fills
# the second worker's idle time; the promptable tokenizer trains at batch 32; the study's five families share
# 300 lite steps, the fewest at which they leave the mean image (docs/experiments.md, "The study's shared budget").
STANDARD = DemoPlan(
    name="standard", pool=12256, study_budget=Budget(300, LITE_LR, widths=LITE),
    own_budgets={"vq-gen": _own("vq-gen", 600), "ae-gen": _own("ae-gen", 600),
                          "promptable": _own("promptable", 360)},
    generator_preset="shapes", generator_arch=_DEMO_ARCH,
    generator_batch={"dalle": 16, "parti": 16, "muse": 32, "diffusion": 32},
    generator_steps={"dalle": 1200, "parti": 900, "muse": 800, "diffusion": 900},
    generator_lr={"dalle": 2e-3, "parti": 2e-3, "muse": 2e-3, "diffusion": 2e-3},
    eval_images=300, study_images=128, probe_steps=300, rerank_n=48, rerank_candidates=4, contrastive_steps=60,
    contrastive_images=4000, sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=10),
                                       "dalle": DALLE_SAMPLING},
    generators=("dalle", "parti", "muse", "diffusion"),  # var, mar and msvq in --full: make demo keeps to 15 minutes
    study=("vq", "rvq", "fsq", "lfq", "ae"),
)
QUICK = DemoPlan(
    name="quick", pool=768, study_budget=Budget(20, LITE_LR, widths=LITE),
    own_budgets={"vq-gen": _own("vq-gen", 60), "ae-gen": _own("ae-gen", 40), "promptable": _own("promptable", 10),
                 "msvq-gen": _own("msvq-gen", 40)},
    generator_preset="tiny", generator_arch={"dalle": {"caption_share": 0.5}},
    generator_batch={"dalle": 16, "parti": 32, "muse": 64, "diffusion": 32, "var": 32, "mar": 32},
    generator_steps={"dalle": 30, "parti": 30, "muse": 30, "diffusion": 20, "var": 30, "mar": 20},
    generator_lr={"dalle": 2e-3, "parti": 1e-3, "muse": 2e-3, "diffusion": 1e-3, "var": 2e-3, "mar": 1e-3},
    eval_images=64, study_images=64, probe_steps=60, rerank_n=8, rerank_candidates=2, contrastive_steps=10,
    contrastive_images=256,
    sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=4),
              "mar": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=4)},
)
# --full: every family (var and mar too; DALL-E trained in both orders, a fifth of its rows image -> text: at 1200 steps
# that kept its text -> image adherence within 2 points, bench/results/captioning_share0.2.json), the demo's model
# sizes, 3-13x its schedules and larger evaluation sets (docs/experiments.md, --full); the study's families share 600
# lite steps (what its rvq / fsq / lfq had), its 500 images are enough for rFID in the probe's 256-d features.
FULL = DemoPlan(
    name="full", pool=20256, study_budget=Budget(600, LITE_LR, widths=LITE),
    own_budgets={"vq-gen": _own("vq-gen", 2000), "ae-gen": _own("ae-gen", 2000), "msvq-gen": _own("msvq-gen", 1200),
                          "promptable": _own("promptable", 1600)},
    generator_preset="shapes", generator_arch={**_DEMO_ARCH, "dalle": {**_DEMO_ARCH["dalle"], "caption_share": 0.2}},
    generator_batch={"dalle": 16, "parti": 16, "muse": 64, "diffusion": 32, "var": 32, "mar": 32},
    generator_steps={"dalle": 4000, "parti": 3000, "muse": 1500, "diffusion": 2500, "var": 1500, "mar": 1500},
    generator_lr={"dalle": 2e-3, "parti": 2e-3, "muse": 2e-3, "diffusion": 2e-3, "var": 2e-3, "mar": 2e-3},
    eval_images=1000, study_images=500, probe_steps=600, rerank_n=256, rerank_candidates=8, contrastive_steps=400,
    contrastive_images=12000, sampling={"diffusion": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=20),
                                        "dalle": DALLE_SAMPLING,
                                        "mar": SamplingConfig(temperature=1.0, cfg_scale=3.0, seed=0, steps=16)},
)
PLANS = {"quick": QUICK, "standard": STANDARD, "full": FULL}
