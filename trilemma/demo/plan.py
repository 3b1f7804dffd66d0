"""What the demo trains, for how long, and how it samples: one ``DemoPlan`` per size (``QUICK`` for
tests, ``STANDARD`` for ``make demo``, ``FULL`` for ``--full``); the standard schedules were chosen
by measurement (the numbers behind each choice are in the comments and in ``bench/results/steps.json``)."""

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
# The models that train in fp32; every other trains under bf16 autocast. One thread, the demo's
# sizes (bench/results/steps.json, bf16 time against fp32): the diffusion UNet 0.53x (slower under
# bf16), the promptable tokenizer 0.97x; the conv tokenizers 1.3-2.6x and DALL-E / Parti / Muse
# 1.0-1.5x faster.
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


# Tokenizers: the presets' full-resolution ResNet blocks cost 80% of a step. Without them
# (channels 32, num_res_blocks 0: 0.08 s a step of 32 against 0.35 s), vq-f4 reached 36.3 dB in
# 1600 steps and 203 s, where the preset reached 35.9 dB in 800 steps and 333 s. But generators learn
# far worse on the lite VQ's tokens (Parti, dim 192, batch 32, 600 steps: 34% mean adherence on a
# 33.8 dB lite VQ, 53% on the 36 dB preset; Parti and Muse at batch 16 on it: 18 and 20%), so the
# generators' VQ keeps the preset's widths and only the other study tokenizers are lite.
LITE = {"channels": 32, "num_res_blocks": 0}

# Generators: more, smaller steps learn faster per second. Measured on one 36 dB vq-f4 tokenizer, 500
# held-out prompts at guidance 3 (shape / colour / size / position accuracy, training seconds):
#   dalle  dim 128, batch 64, 400 steps, lr 2e-3   30 / 43 / 64 / 88%   111 s
#   dalle  dim 192, batch 64, 300 steps            33 / 55 / 68 / 86%   120 s
#   dalle  dim 192, batch 32, 600 steps            46 / 71 / 78 / 92%
#   dalle  dim 192, batch 16, 1200 steps           50 / 82 / 79 / 91%   171 s
#   dalle  dim 256, batch 64, 320 steps (stop 15)  45 / 65 / 73 / 93%  ~250 s
#   parti  dim 128, batch 64, 400 steps, lr 2e-3   21 / 38 / 50 / 70%   118 s
#   parti  dim 192, batch 32, 600 steps, lr 1e-3   25 / 50 / 58 / 78%   184 s
#   muse   dim 128, batch 64, 400 steps, lr 2e-3   27 / 57 / 76 / 90%   128 s
#   diffusion UNet 64-128, batch 64, 250 steps      8 /  6 / 15 / 28%   ~180 s (32-64 at 400 steps, lr 2e-3: the same)
# Diffusion with epsilon needed far longer (1400 steps: 48 / 31 / 50 / 57%); x_0 prediction learns far
# faster (below; bench/results/diffusion.json is the demo's x_0 model, runs/demo25).
# The lite conv tokenizers take 2e-3 (lite vq-f4: 36.3 dB at 1600 steps); the generators' VQ and the
# promptable tokenizer their presets' recipes (Preset.recipe: what `trilemma train` uses by default).
_TOKENIZER_LR = {"rvq": 2e-3, "fsq": 2e-3, "lfq": 2e-3, "ae": 2e-3,
                 **{name: registry.get_preset("tokenizer", TOKENIZERS[name]).recipe["lr"] for name in ("vq", "promptable")}}
# The generators' widths in the standard and full demos: smaller than the presets, more steps a minute.
_DEMO_ARCH = {"dalle": {"dim": 192, "heads": 3}, "parti": {"dim": 192, "heads": 3}, "muse": {"dim": 128, "heads": 2},
              "diffusion": {"channels": (32, 64)}}

# DALL-E samples at temperature 0.5 in make demo. Measured on runs/demo16's DALL-E (300 prompts, shape
# / colour / size / position, FID with floor 3.91), guidance 3: temperature 1.0 28 / 48 / 60 / 83%
# (FID 6.0), 0.7 29 / 52 / 67 / 85% (5.9), 0.5 29 / 56 / 69 / 89% (5.8), 0.3 29 / 54 / 69 / 88%
# (5.9); top-k 8 at 1.0 28 / 51 / 65 / 84%; guidance 5 at 1.0 or 0.7 and guidance 2 at 0.5 lower.
# Parti at 0.5 fell (8 / 15 / 19 / 33%, FID 13.0 against 9 / 17 / 22 / 39%, 8.2) and Muse stayed
# (68 / 98 / 99 / 100%), so they keep SAMPLING; --full samples as make demo does.
DALLE_SAMPLING = SamplingConfig(temperature=0.5, cfg_scale=3.0, seed=0)

# make demo, on two one-thread workers (run.py). Sequentially (runs/demo8, demo9: 860 and 900 s; vq
# 600 steps, generators 650 / 400 / 300 / 150 steps) mean adherence read DALL-E 59%, Muse 39%, Parti
# 20%, diffusion 7%. On two workers, dalle / parti / muse / diffusion at 1000 / 450 / 400 / 600 steps
# (runs/demo10, 962 s: too long) read 62 / 29 / 45 / 10%; with the vq at 500 steps and 900 / 400 /
# 330 / 500 (demo11, 772 s) the vq fell from 31.9 to 29.0 dB (shape ceiling 93 -> 76%) and read
# 62 / 25 / 35 / 10%, DALL-E's edit 35 dB outside the box. In the loop, a step on one thread beside
# another training takes: vq 0.66 s, dalle 0.23, parti 0.54, muse 0.55, diffusion 0.42; the first vq
# generator also tokenizes the pool (60 s). Muse learns in a jump: on demo12's 31.9 dB vq, one
# thread beside another training, batch 64 for 800 steps (378 s) read 77 / 99 / 99 / 100% (mean
# 94%), batch 32 for 1200 steps (306 s) 69 / 99 / 99 / 100% (92%), against 25-45% at 330-400 steps of
# 64. So Muse gets the long run (batch 32, 1200 steps) and the others give way. runs/demo12 (vq 600,
# 900 / 400 / 330 / 500 steps, muse at batch 64): 832 s, 61 / 24 / 25 / 10%. runs/demo13 (promptable
# 30 steps, diffusion 400): 791 s; muse 69 / 99 / 99 / 100% (mean 91%, FID 4.25, floor 3.91), dalle
# 55%, parti 17%, diffusion 9%, the promptable tokenizer flat at 15.0 dB across budgets. This plan
# (runs/demo15) moves ~70 s from diffusion to the promptable tokenizer: 842 s; the same token
# generators; diffusion at 250 steps 4 / 3 / 10 / 19% (mean 9%, FID 9.5); promptable 15.2 -> 16.5 dB
# from k = 1 to 32. Parti then went from batch 32 x 300 steps at lr 1e-3 to batch 16 x 600 at 2e-3, as
# DALL-E trains: on demo15's VQ, one thread beside another run, 300 prompts, it read 9 / 17 / 22 /
# 39% after 137 s of training, where demo15's Parti read 9 / 11 / 20 / 30% (its task: 175 s); batch
# 32 x 300 at 2e-3 read 5 / 10 / 14 / 27%, lr 3e-3 8 / 4 / 17 / 29%, 6 decoder blocks 8 / 13 / 17 / 31%.
# runs/demo16: 836 s; Parti 9 / 17 / 22 / 39% (mean 22%), the rest as in demo15. runs/demo17 (this
# plan, DALL-E at temperature 0.5): 806 s; DALL-E 29 / 56 / 69 / 89% (mean 61%, FID 5.8), its edit
# 41.8 dB outside the box (37.4 at 1.0), reranked best of 4: 36 / 63 / 78 / 95% against 28 / 55 / 67 / 86%.
# A narrower Parti for more steps (dim 128, batch 32, 800 steps; alone, one thread beside another run:
# 13 / 30 / 36 / 48% after 215 s) read the same in runs/demo18 (mean 32%), but its task took 292 s
# and the demo 930 s, over 15 minutes: not kept. Guidance 5, temperature 0.8 or top-k 64 left
# demo17's Parti at 22%.
# runs/demo22 (this plan, after prompt embeddings at unit variance; DALL-E 1200 steps, Parti 900, Muse
# 800, diffusion 450 in fp32, the promptable tokenizer in fp32), Xeon with AMX: 478 s; shape / colour /
# size / position: DALL-E 47 / 78 / 73 / 90% (mean 72%, FID 5.25, floor 3.92), Parti 53 / 83 / 81 / 92%
# (77%), Muse 80 / 99 / 100 / 100% (95%), diffusion 6 / 6 / 12 / 22% (11%); edits 41.8 dB outside the box.
# Diffusion then moved to predicting x_0 (generators/diffusion.py): alone, fp32, on the demo's AE (300
# steps, 24.3 dB, shape ceiling 61%), 450 steps read 70% mean and 900 steps 86%; on an AE of 600 steps
# (36 s alone), 900 steps 63 / 98 / 94 / 98% (88%, FID 5.1 against 7.0). So the AE trains 600 steps
# and diffusion 900, filling the second worker's idle time before Parti ends. runs/demo24 (this plan,
# with the promptable tokenizer's box crops), Xeon: 515 s; diffusion 63 / 99 / 94 / 99% (mean 89%, FID
# 5.15), the token generators as in demo22; the box +2.3 / +2.6 / +3.0 / +2.7 dB inside at k = 1 / 2 / 4 / 8.
# runs/demo25 (the promptable presets' full-budget pass, before their outside term): 615 s on a slower Xeon (every unchanged task
# 10-17% slower than in demo24; the promptable tokenizer 122 s against 79), the generators' numbers
# unchanged; the box +4.1 / +4.9 / +5.1 / +5.1 dB inside and +1.0 / +0.8 / +0.6 / +0.6 outside (at 180
# steps its unprompted curve is still near the mean image, 15.2 dB).
# The promptable tokenizer then trains 360 steps at lr 2e-3. Measured alone on both threads over
# demo25's AE, 200 held-out images (PSNR at k = 1 / 2 / 4 / 8 / 16 / 32; the box's gain at k = 1 / 2 /
# 4 / 8; the first row is demo25's, before the outside term; seed 0; half the training images prompted
# but in the last row, which has the presets' three in four):
#   batch 32, 180 steps, lr 1e-3            15.4 / 15.4 / 15.4 / 15.5 / 15.6 / 16.1   +4.2 / +4.9 / +5.0 / +5.0
#   batch 32, 180 steps, lr 2e-3     79 s   15.3 / 15.4 / 15.5 / 15.8 / 16.5 / 18.8   +3.9 / +4.6 / +4.8 / +4.3
#   batch 32, 180 steps, lr 3e-3     78 s   15.3 at every k                           +2.0 / +2.2 / +2.3 / +2.3
#   batch 16, 360 steps, lr 1e-3     88 s   15.4 / 15.4 / 15.6 / 16.4 / 17.4 / 19.3   +4.0 / +4.9 / +4.8 / +4.1
#   batch 16, 360 steps, lr 2e-3     90 s   15.3 / 15.4 / 15.6 / 16.3 / 18.2 / 21.2   +4.3 / +4.6 / +4.7 / +4.2
#   batch 8, 720 steps, lr 2e-3     107 s   15.3 / 15.4 / 15.7 / 16.2 / 17.9 / 19.5   +2.9 / +3.1 / +3.1 / +2.6
#   batch 32, 360 steps, lr 2e-3    143 s   15.3 / 15.4 / 15.8 / 17.1 / 19.5 / 22.7   +4.7 / +5.3 / +5.3 / +4.4
# It sits on the mean image until it finds a way off, after a number of steps that varies from seed to
# seed: at batch 16 (and its VQ's 512 codes then get 1 vector each a batch, under the dead-code
# threshold) seeds 0 / 1 / 2 reached 20.6 / 16.0 / 21.8 dB at K with the presets' recipe (16.4
# inside runs/demo26), at batch 32 22.7 / 22.5 / 23.0. So batch 32 for 360 steps. runs/demo28 (this
# plan, the task order of run.graph): 634 s on a Xeon with AMX (the promptable task 226 s), the
# generators' numbers as in demo24; the promptable tokenizer 15.1 -> 22.0 dB from k = 1 to 32, the box
# +4.8 / +5.5 / +5.7 / +5.1 dB inside at k = 1 / 2 / 4 / 8 and +0.9 / +0.7 / -0.5 / -0.9 outside.
# runs/demo29 (the presets' box weight 8, from 4), on a Xeon 10-17% slower per task: 735 s (the
# promptable task 263 s), the generators' numbers as in demo24; the promptable tokenizer 15.1 -> 20.5
# dB (weight 8 costs this short schedule 1.4-1.7 dB at k = 16 / 32), the box +5.1 / +5.8 / +6.3 / +5.7
# dB inside at k = 1 / 2 / 4 / 8 and +0.5 / +0.0 / -0.2 / +0.0 outside.
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
# --full: the demo's model sizes, 3-13x its schedules and larger evaluation sets. runs/full1: 3142 s
# (52 min; tasks: vq 1338 s, then dalle 789, parti 776; beside them the small tokenizers, probe,
# scorer, diffusion 1158, then muse 868). VQ 46.1 dB (ceiling 100% on every attribute); shape /
# colour / size / position: muse 99.9 / 99.9 / 100 / 100% (FID 1.98, floor 1.98), parti 87 / 96 / 94
# / 98%, dalle 68 / 82 / 82 / 93% (best of 8 reranked: 84 / 94 / 93 / 98%), diffusion 9 / 15 / 21 / 29%.
# This plan (runs/full2, Xeon with AMX): 1929 s (32 min; vq 613 s, promptable 709, muse 529, parti
# 458, dalle 455, diffusion 403). VQ 43.9 dB, AE 39.8 dB (ceilings 100% on every attribute); shape /
# colour / size / position: muse 100 / 100 / 100 / 100% (FID 1.96, floor 1.96), diffusion 100 / 100 /
# 100 / 100% (2.36), parti 94 / 96 / 96 / 98% (2.20), dalle 83 / 92 / 90 / 94% (2.58; best of 8
# reranked 93 / 98 / 97 / 99%); the promptable tokenizer 15.6 -> 27.0 dB from k = 1 to 32, the box
# +3.7 / +3.7 / +3.4 / +1.1 dB inside at k = 1 / 2 / 4 / 8. Since then the promptable preset decodes the
# full budget at every step and prompts three training images in four. runs/full3 (this plan, the task
# order of run.graph): 2201 s (37 min; vq 659 s, promptable 1013, muse 583, parti 526, dalle 510,
# diffusion 459), the generators' numbers as in full2; the promptable tokenizer 15.4 -> 29.8 dB, the box
# +6.3 / +7.0 / +6.2 / +2.6 dB inside at k = 1 / 2 / 4 / 8 and +4.0 / +5.0 / +2.6 / +0.1 outside.
# runs/full4 (the promptable preset's recipe: lr 2e-3, the box weighted 8), on a Xeon 10-17% slower
# per task than full3's: 2467 s (41 min; vq 732 s, promptable 1117, muse 632, parti 613, dalle 564,
# diffusion 498), the generators' numbers as in full2; the promptable tokenizer 15.4 -> 30.6 dB, the
# box +6.6 / +7.7 / +6.8 / +4.4 dB inside at k = 1 / 2 / 4 / 8 and +2.1 / +2.4 / +1.5 / +0.1 outside.
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
