"""The word-level text tokenizer: deterministic vocabulary, exact round trips, loud truncation."""

import json

import pytest
import torch

from trilemma.data import ShapesDataset, TextTokenizer


def test_vocabulary_order_and_specials():
    tok = TextTokenizer.build(["b a c", "a b", "a, A!", "zz"])
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<eos>"]
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab[3:] == ["a", "b", "c", "zz"]  # by frequency (a:4, b:2), then alphabetical
    assert tok.vocab_size == 7
    again = TextTokenizer.build(["zz", "a, A!", "a b", "b a c"])
    assert again.vocab == tok.vocab  # caption order does not matter
    assert TextTokenizer.build(["b a c", "a b", "a, A!", "zz"], min_freq=2).vocab[3:] == ["a", "b"]


def test_encode_decode_round_trip_on_shapes_captions():
    captions = [ShapesDataset("train")[i]["caption"] for i in range(50)]
    tok = TextTokenizer.build(captions, max_length=40)
    ids = tok.encode(captions)
    assert ids.shape == (50, 40) and ids.dtype == torch.long
    expected = [" ".join(c.replace(",", " ").split()) for c in captions]
    assert tok.decode(ids) == expected
    assert tok.truncated == 0
    row = ids[0].tolist()
    n = len(expected[0].split())
    assert row[n] == tok.eos_id and set(row[n + 1:]) <= {tok.pad_id}


def test_unknown_words_and_case():
    tok = TextTokenizer.build(["a red circle"], max_length=8)
    ids = tok.encode(["A RED hexagon"])
    assert ids[0, :4].tolist() == [tok.word_to_id["a"], tok.word_to_id["red"], tok.unk_id,
                                   tok.eos_id]
    assert tok.decode(ids[0]) == ["a red <unk>"]
    with pytest.raises(TypeError, match="list"):
        tok.encode("a red circle")


def test_truncation_is_counted_and_warned():
    tok = TextTokenizer.build(["one two three four five six"], max_length=4)
    with pytest.warns(UserWarning, match=r"truncated 1 of 2 caption\(s\) to max_length=4"):
        ids = tok.encode(["one two three four five six", "one"])
    w = tok.word_to_id
    assert ids[0].tolist() == [w["one"], w["two"], w["three"], tok.eos_id]  # eos stays last
    assert tok.decode(ids) == ["one two three", "one"]
    assert tok.truncated == 1
    with pytest.warns(UserWarning, match="truncated 2 of 2"):
        tok.encode(["one two three four", "six five four three two"])
    assert tok.truncated == 3


def test_save_load_round_trip(tmp_path):
    captions = ["a small red circle at the top", "a large blue cross on the left"]
    tok = TextTokenizer.build(captions, max_length=12)
    path = tok.save(tmp_path / "sub" / "text.json")
    loaded = TextTokenizer.load(path)
    assert loaded.vocab == tok.vocab and loaded.max_length == 12
    assert torch.equal(loaded.encode(captions), tok.encode(captions))
    assert TextTokenizer.from_dict(json.loads(path.read_text())).vocab == tok.vocab
    assert [p.name for p in path.parent.iterdir()] == ["text.json"]  # no temp files left


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TextTokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")
    with pytest.raises(ValueError, match="bad.json"):
        TextTokenizer.load(bad)
    bad.write_text(json.dumps({"vocab": ["x", "y"]}))
    with pytest.raises(ValueError, match="bad.json"):
        TextTokenizer.load(bad)
