"""Captioning with the decoder-only generator: both orders in one model, the exact shapes scorer."""

import json
import types

import pytest
import torch

from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.data.shapes import ShapesDataset, caption
from trilemma.data.text import TextTokenizer, words
from trilemma.generators.sampling import SamplingConfig as S
from trilemma.studies.captioning import score_shapes_captions
from trilemma.tokens import Tokens, TokenSpec
from trilemma.training.generator import train_generator
from trilemma.training.loop import TrainConfig

SPEC = TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4))
CAPTIONS = ["a large red circle at the top left", "a small blue square in the center", "a large green cross on the left"]


def tiny(share: float):
    text = TextTokenizer.build(CAPTIONS, max_length=10)
    torch.manual_seed(0)
    return registry.build("generator", "dalle-tiny", spec=SPEC, text=text, caption_share=share), text


def test_the_scorer_is_exact_on_the_datas_own_captions_and_counts_each_mistake():
    items = [ShapesDataset("test")[i] for i in range(300)]
    truths = [it["attributes"] for it in items]
    said = [" ".join(words(it["caption"])) for it in items]  # as a caption is decoded: lowercase, no commas
    assert set(score_shapes_captions(said, truths).values()) == {1.0}
    wrong = [dict(t[0], color="red" if t[0]["color"] != "red" else "blue") for t in truths]  # first object's colour
    scores = score_shapes_captions([caption([w] + t[1:]) for w, t in zip(wrong, truths)], truths)
    objects = sum(len(t) for t in truths)
    assert scores["caption_color_acc"] == pytest.approx(1 - 300 / objects)
    assert scores["caption_shape_acc"] == scores["caption_position_acc"] == 1.0 and scores["caption_image_acc"] == 0.0
    missing = score_shapes_captions(["not a caption"] + said[1:], truths)
    assert missing["caption_parsed"] == pytest.approx(299 / 300) and missing["caption_image_acc"] == pytest.approx(299 / 300)


def test_a_model_trained_on_one_order_refuses_the_other():
    one, text = tiny(0.0)
    with pytest.raises(ValueError, match=r"text -> image only \(`caption_share` 0\)"):
        one.caption(torch.zeros(1, 16, dtype=torch.long))
    reader, _ = tiny(1.0)
    with pytest.raises(ValueError, match=r"image -> text only \(`caption_share` 1\)"):
        reader.sample(text.encode(CAPTIONS[:1]))
    with pytest.raises(ValueError, match="captioning takes temperature"):
        tiny(0.5)[0].caption(torch.zeros(1, 16, dtype=torch.long), S(cfg_scale=3.0))


def test_captions_repeat_for_a_seed_and_always_end_in_eos():
    gen, text = tiny(0.5)
    ids = torch.randint(32, (4, 16), generator=torch.Generator().manual_seed(0))
    a, b = gen.caption(ids, S(temperature=1.0, seed=3)), gen.caption(ids, S(temperature=1.0, seed=3))
    assert torch.equal(a, b) and a.shape == (4, text.max_length)
    assert torch.equal(gen.caption(ids), gen.caption(ids))  # greedy
    assert ((a == text.eos_id).sum(1) == 1).all()  # one eos per row, padding after it
    assert not torch.equal(a, gen.caption(ids, S(temperature=1.0, seed=4)))


def test_one_model_learns_both_directions():
    gen, text = tiny(0.5)
    image_ids = torch.randint(32, (3, 16), generator=torch.Generator().manual_seed(1))
    text_ids = text.encode(CAPTIONS)
    opt = torch.optim.AdamW(gen.parameters(), lr=3e-3)
    gen.train()
    for _ in range(250):
        loss = gen.loss(Tokens(ids=image_ids), text_ids)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert text.decode(gen.caption(image_ids)) == CAPTIONS  # image -> text, memorised
    drawn = gen.sample(text_ids, S(temperature=0)).ids
    assert (drawn == image_ids).float().mean() > 0.9  # text -> image, from the same weights


def test_caption_and_eval_captioning_from_the_command_line(tmp_path, tiny_vq, capsys):
    tok_dir = checkpoint.save(tiny_vq, tmp_path / "vq")
    run = tmp_path / "dalle"
    train_generator("dalle", tok_dir, "shapes", run, TrainConfig(steps=2, batch_size=8, eval_every=2, save_every=2),
                    preset="dalle-tiny", num_images=64, overrides={"caption_share": 0.5})
    from trilemma.images import save_image

    paths = []
    for i in range(3):
        save_image(ShapesDataset("test", size=32)[i]["image"], tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    out = tmp_path / "captions.jsonl"
    assert main(["caption", *paths, "--generator", str(run), "--seed", "0", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in lines] == paths and all(isinstance(r["caption"], str) for r in lines)
    assert all(f"{p}\t" in capsys.readouterr().out for p in paths[:1])
    assert main(["eval", "captioning", "--generator", str(run), "--n", "6", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "captioning.json").read_text())
    assert result["protocol"]["images"] == 6 and 0 <= result["caption_shape_acc"] <= 1
    one = tmp_path / "dalle-one"
    train_generator("dalle", tok_dir, "shapes", one, TrainConfig(steps=1, batch_size=8, eval_every=1, save_every=1),
                    preset="dalle-tiny", num_images=64, cache_dir=run / "cache")
    assert main(["caption", paths[0], "--generator", str(one)]) == 1
    assert "--caption-share" not in capsys.readouterr().err  # the field, not a flag no command has


def test_round_trip_reads_generated_images_back_through_the_generators_own_captions():
    from trilemma.studies.captioning import round_trip
    from trilemma.studies.generation import reads_images

    items = [ShapesDataset("val")[i] for i in range(20)]
    said = [it["caption"] for it in items]
    said[0] = said[1]  # one image captioned as another's

    class Reader:
        generator = tiny(0.5)[0]

        def caption(self, images, batch_size=64):
            assert len(images) == 20
            return said

    scores = round_trip(Reader(), torch.zeros(20, 3, 32, 32), [it["attributes"] for it in items])
    assert scores["round_trip_image_acc"] == pytest.approx(19 / 20) and scores["round_trip_parsed"] == 1.0
    assert reads_images(Reader()) and not reads_images(types.SimpleNamespace(generator=tiny(0.0)[0]))


def test_every_parameter_gets_a_gradient_even_in_a_batch_of_one_order():
    gen, text = tiny(0.5)
    gen.train()
    torch.manual_seed(3)
    ids, text_ids = torch.randint(32, (1, 16)), text.encode(CAPTIONS[:1])
    for _ in range(6):  # one row: each step's batch holds a single order
        gen.zero_grad()
        gen.loss(Tokens(ids=ids), text_ids)["loss"].backward()
        assert all(p.grad is not None for p in gen.parameters())
