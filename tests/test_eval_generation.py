"""evaluate_generation / score_generated: real images scored as if generated sit at the floor; the
benchmark's categories draw their prompts from the splits the protocol states."""

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# tests/ is on sys.path (no __init__.py): the briefly trained models are cached once per session.
from test_contrastive import quick_model
from test_probe import quick_probe

from trilemma import checkpoint
from trilemma.data import NOVEL_PAIRS, FolderDataset, load_dataset, parse_caption, split_of
from trilemma.studies import benchmark as benchmark_module
from trilemma.studies.benchmark import protocol_lines
from trilemma.studies.generation import Benchmark, Category, benchmark, evaluate_generation, score_generated
from trilemma.studies.scorers import contrastive_scorer
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
    blind = score_generated(images, reference, floor, None, attributes=shifted, probe=probe, progress=False)
    assert blind["adherence_object_acc"] == wrong["adherence_object_acc"] and "fid" not in blind  # no features: no FID


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
    bench = Benchmark({"unseen": Category(prompts, reference, floor, attributes)}, probe.features, probe=probe)
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
    with pytest.raises(ValueError, match="unseen floor set has 199 images but there are 200"):
        evaluate_generation(LookupPipeline(prompts, images), Benchmark({"unseen": Category(prompts, reference, floor[:199])},
                                                                       features), progress=False)
    with pytest.raises(ValueError, match="disjoint"):
        score_generated(images, floor, floor, features, progress=False)
    with pytest.raises(ValueError, match="both probe= and attributes="):
        score_generated(images, reference, floor, features, probe=quick_probe(), progress=False)


# ----------------------------------------------------------------------------- the benchmark's categories

SPLITS = {"unseen": "val", "novel": "novel", "train": "train"}  # where each category's prompts come from


@functools.cache
def shapes_bench() -> Benchmark:
    """The shapes benchmark at n=30 (10 prompts per diagnostic category), on the session's quick probe."""
    run = Path(tempfile.mkdtemp()) / "probe"  # a finished probe run: the quick probe, recorded as trained on the train split
    checkpoint.save(quick_probe(), run / "model", extra={"step": 1, "data": repr(load_dataset("shapes", "train"))})
    return benchmark("shapes", 30, 32, probe_dir=run, probe_steps=1, diagnostic_n=10)


def test_shapes_categories_take_disjoint_prompts_from_their_splits():
    bench = shapes_bench()
    assert list(bench.categories) == ["unseen", "novel", "train"] and bench.headline == "unseen"
    assert bench.prompts is bench.categories["unseen"].prompts  # what the demo and the rerank study read
    for name, cat in bench.categories.items():
        assert len(cat.prompts) == len(cat.floor) == (30 if name == "unseen" else 10) and len(cat.reference) == 30
        # every prompt's composition belongs to the category's split, checked from the caption alone
        assert {split_of(parse_caption(p)) for p in cat.prompts} == {SPLITS[name]}, name
        assert cat.attributes == [parse_caption(p) for p in cat.prompts]
    prompts = [set(c.prompts) for c in bench.categories.values()]
    assert all(not (a & b) for i, a in enumerate(prompts) for b in prompts[i + 1:])
    novel = bench.categories["novel"]
    for prompt, pairs in zip(novel.prompts, novel.novel_pairs):
        shown = {f"{o['color']} {o['shape']}" for o in parse_caption(prompt)} & {f"{c} {s}" for c, s in NOVEL_PAIRS}
        assert shown and sorted(shown) == pairs, prompt
    # The reference: test images for unseen prompts; for the others, items of their split after the floor's.
    def images(split, start, stop):
        data = load_dataset("shapes", split, length=stop)
        return torch.stack([data[i]["image"] for i in range(start, stop)])

    assert torch.equal(bench.categories["unseen"].reference, images("test", 0, 30))
    assert torch.equal(bench.categories["unseen"].floor, images("val", 0, 30))
    assert torch.equal(bench.categories["novel"].reference, images("novel", 10, 40))
    assert torch.equal(bench.categories["train"].floor, images("train", 0, 10))  # the items generators train on first


def test_the_protocol_states_each_role_and_the_measured_overlap_with_train():
    protocol = shapes_bench().protocol
    assert protocol["headline"] == "unseen" and protocol["seed"] == 0 and protocol["features"].startswith("auto (")
    assert "trained on ShapesDataset(split='train'" in protocol["adherence"]
    cats = protocol["categories"]
    assert [(c["prompts"]["split"], c["floor"]["split"], c["reference"]["split"]) for c in cats.values()] == \
        [("val", "val", "test"), ("novel", "novel", "novel"), ("train", "train", "train")]
    assert cats["unseen"]["prompts_in_train"] == {"compositions": 0, "measured": 30}
    assert cats["unseen"]["reference_in_train"] == {"compositions": 0, "measured": 30}
    assert cats["novel"]["prompts_in_train"]["compositions"] == 0 and cats["novel"]["prompt_compositions"] == {"novel": 10}
    assert cats["train"]["prompts_in_train"] == {"compositions": 10, "measured": 10}  # the memorisation diagnostic
    assert sum(cats["novel"]["novel_pair_prompts"].values()) >= 10
    text = "\n".join(protocol_lines(protocol))
    assert "| unseen (headline) | 30 val | 30 test | 0 of 30 compositions | 0 of 30 compositions |" in text


def test_every_category_is_scored_beside_its_floor_and_ceiling():
    bench = shapes_bench()
    table = {p: x for c in bench.categories.values() for p, x in zip(c.prompts, c.floor)}
    pipe = LookupPipeline(list(table), list(table.values()))  # real images "as if generated"
    out = evaluate_generation(pipe, bench, SamplingConfig(seed=0), progress=False)
    assert set(out["categories"]) == {"unseen", "novel", "train"} and [c[0] for c in pipe.calls] == [30, 10, 10]
    assert {k: v for k, v in out.items() if k not in ("categories", "protocol", "samples_per_s")} == \
        {k: v for k, v in out["categories"]["unseen"].items() if k != "samples_per_s"}  # the headline on top
    assert out["protocol"]["sampling_seed"] == 0 and out["protocol"]["categories"] == bench.protocol["categories"]
    for name, scores in out["categories"].items():
        assert scores["num_images"] == (30 if name == "unseen" else 10)
        assert scores["fid"] == pytest.approx(scores["fid_floor"])  # the floor's own images score the floor
        for k in ("shape_acc", "color_acc", "object_acc", "image_acc"):  # ... and the probe's ceiling
            assert scores[f"adherence_{k}"] == scores[f"adherence_{k}_ceiling"], (name, k)
    assert out["categories"]["unseen"]["adherence_object_acc_ceiling"] > 0.8  # the quick probe reads unseen prompts
    pairs = out["categories"]["novel"]["by_novel_pair"]
    assert set(pairs) <= {f"{c} {s}" for c, s in NOVEL_PAIRS} and sum(p["images"] for p in pairs.values()) >= 10
    for scores in pairs.values():
        assert 0 <= scores["adherence_object_acc"] <= 1 and "adherence_object_acc_ceiling" in scores
        assert "adherence_image_acc" not in scores  # only the pair's own objects are scored
    assert "by_novel_pair" not in out["categories"]["train"]


def test_a_folder_takes_prompts_and_floor_from_val_the_reference_from_test_the_scorer_from_train(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "folder"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(100):
        pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(f"picture number {i}")
    trained_on = []

    def quick_scorer(run, dataset, seed=0):  # the real scorer, at 2 steps
        trained_on.append(dataset)
        return contrastive_scorer(run, dataset, steps=2, seed=seed)

    monkeypatch.setattr(benchmark_module, "contrastive_scorer", quick_scorer)
    bench = benchmark(str(root), 8, 32, features="none", cache_dir=tmp_path / "eval")
    (cat,) = bench.categories.values()
    val, test = (FolderDataset(root, size=32, split=s) for s in ("val", "test"))
    n_val, n_test = min(8, len(val)), min(8, len(test))
    assert n_val >= 2 and n_test >= 2, (len(val), len(test))  # ~5% each of 100 images
    assert bench.headline == "unseen" and cat.prompts == [val[i]["caption"] for i in range(n_val)]
    assert torch.equal(cat.floor, torch.stack([val[i]["image"] for i in range(n_val)]))
    assert torch.equal(cat.reference, torch.stack([test[i]["image"] for i in range(n_test)]))
    (train,) = trained_on
    assert isinstance(train, FolderDataset) and train.split == "train" and len(train) == 100 - len(val) - len(test)
    about = bench.protocol["categories"]["unseen"]
    assert (about["prompts"]["split"], about["reference"]["split"]) == ("val", "test")
    assert about["prompts_in_train"]["images"] == about["prompts_in_train"]["files"] == 0
    assert about["prompts_in_train"]["measured"] == [len(train), len(val)]
    assert "trained on FolderDataset(" in bench.protocol["adherence"] and "split='train'" in bench.protocol["adherence"]
    assert set(cat.ceiling) == {"clip_score", "r_precision"}
    with pytest.raises(ValueError, match="`split='novel'`.*a folder"):
        benchmark(str(root), 8, 32, features="none", cache_dir=tmp_path / "eval", split="novel")
