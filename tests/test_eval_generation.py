"""evaluate_generation / score_generated: real images scored as if generated sit at the floor."""

import functools

import pytest
import torch
import torch.nn.functional as F

# tests/ is on sys.path (no __init__.py): the briefly trained models are cached once per session.
from test_contrastive import quick_model
from test_probe import quick_probe

from trilemma.data import load_dataset
from trilemma.studies.generation import Benchmark, evaluate_generation, score_generated
from trilemma.generators.sampling import SamplingConfig

N = 200
FEATURE_KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "fid_floor", "kid_floor", "precision_floor",
                "recall_floor", "num_images"}  # fmt: skip


@functools.cache
def real_sets():
    """Reference (val split), floor (test[:N]) and stand-in "generated" images (test[N:2N])."""

    def load(split, start, count):
        data = load_dataset("shapes", split, length=start + count)
        items = [data[i] for i in range(start, start + count)]
        return torch.stack([it["image"] for it in items]), [it["caption"] for it in items], [it["attributes"] for it in items]

    return load("val", 0, 2 * N)[0], load("test", 0, N)[0], load("test", N, N)


def test_real_images_score_at_the_floor_and_adhere_to_their_prompts():
    reference, floor, (images, prompts, attributes) = real_sets()
    probe = quick_probe()
    out = score_generated(images, reference, floor, probe.features, prompts=prompts, attributes=attributes,
                          probe=probe, contrastive=quick_model(), progress=False)  # fmt: skip
    assert FEATURE_KEYS <= set(out) and out["num_images"] == N
    assert out["fid"] < 1.5 * out["fid_floor"] + 0.5, out
    assert abs(out["precision"] - out["precision_floor"]) < 0.1 and abs(out["recall"] - out["recall_floor"]) < 0.1
    assert out["adherence_object_acc"] > 0.9 and out["adherence_position_acc"] > 0.98
    assert out["clip_score"] > 50 and out["r_precision"] > 0.7


def test_degraded_images_score_worse_than_the_floor_and_wrong_prompts_adhere_less():
    reference, floor, (images, _, attributes) = real_sets()
    probe = quick_probe()
    # Features trained to classify are fairly blur-tolerant (a 3x3 blur only doubled FID): blur 5x5.
    blurred = F.avg_pool2d(images, 5, stride=1, padding=2)
    bad = score_generated(blurred, reference, floor, probe.features, progress=False)
    assert bad["fid"] > 2 * bad["fid_floor"] and bad["recall"] < bad["recall_floor"] - 0.3
    assert bad["kid_mean"] > bad["kid_floor"] + 5 * bad["kid_std"]
    assert not any(k.startswith("adherence_") for k in bad) and "clip_score" not in bad
    shifted = attributes[1:] + attributes[:1]
    wrong = score_generated(images, reference, floor, probe.features, attributes=shifted, probe=probe, progress=False)
    assert wrong["adherence_object_acc"] < 0.3 and wrong["adherence_image_acc"] < 0.1


class LookupPipeline:
    """A stand-in generator: the real image of each caption; records the seeds it is given."""

    def __init__(self, prompts, images):
        self.table = dict(zip(prompts, images))
        self.calls = []

    def __call__(self, prompts, sampling, batch_size=64):
        self.calls.append((len(prompts), sampling.seed, sampling.temperature))
        return torch.stack([self.table[p] for p in prompts])


def test_evaluate_generation_seeds_chunks_and_times_sampling():
    reference, floor, (images, prompts, attributes) = real_sets()
    probe = quick_probe()
    pipe = LookupPipeline(prompts, images)
    bench = Benchmark(prompts, reference, floor, probe.features, attributes=attributes, probe=probe)
    out = evaluate_generation(pipe, bench, SamplingConfig(seed=7, temperature=0.5), batch_size=64, progress=False)
    assert [c[:2] for c in pipe.calls] == [(64, 7), (64, 71), (64, 135), (8, 199)]
    assert all(c[2] == 0.5 for c in pipe.calls)
    assert out["samples_per_s"] > 0 and out["fid"] < 1.5 * out["fid_floor"] + 0.5
    assert out["adherence_object_acc"] > 0.9
    direct = score_generated(images, reference, floor, probe.features, attributes=attributes, probe=probe, progress=False)
    assert out["fid"] == pytest.approx(direct["fid"]) and out["adherence_image_acc"] == direct["adherence_image_acc"]


def test_precomputed_reference_features_give_the_same_scores():
    reference, floor, (images, _, _) = real_sets()
    features = quick_probe().features
    from trilemma.metrics.features import extract

    a = score_generated(images, reference, floor, features, progress=False)
    b = score_generated(images, extract(features, reference, progress=False), floor, features, progress=False)
    assert a == b


def test_bad_inputs_name_the_problem():
    reference, floor, (images, prompts, _) = real_sets()
    features = quick_probe().features
    with pytest.raises(ValueError, match="floor set has 199 images but there are 200"):
        evaluate_generation(LookupPipeline(prompts, images), Benchmark(prompts, reference, floor[:199], features), progress=False)
    with pytest.raises(ValueError, match="disjoint"):
        score_generated(images, floor, floor, features, progress=False)
    with pytest.raises(ValueError, match="both probe= and attributes="):
        score_generated(images, reference, floor, features, probe=quick_probe(), progress=False)
