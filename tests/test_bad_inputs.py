"""A sweep of bad inputs over every command, as a hostile new user would type them.

Each case runs ``trilemma.cli.main`` in-process and checks: the exit code (2 for a command line
that does not parse, 1 for a refused command), one ``error:`` line that names the problem (the
flag, field or file), no traceback, and that no file that existed before changed (content and
mode). The world (a tiny tokenizer run, another tokenizer, a generator run, image files, broken
checkpoints) is built once for the module.
"""

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from trilemma import checkpoint, registry
from trilemma.cli import main
from trilemma.training.generator import train_generator
from trilemma.training.loop import TrainConfig
from trilemma.training.tokenizer import train_tokenizer

TINY = {"channels": 8, "quantizer": {"codebook_size": 32, "codebook_dim": 4}}
SET_TINY = ["--set", "channels=8", "--set", "quantizer.codebook_size=32", "--set", "quantizer.codebook_dim=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cfg = TrainConfig(steps=2, batch_size=8, eval_every=2, save_every=2, warmup_steps=1)
    train_tokenizer("vq-f4-shapes", "shapes", root / "tok", cfg, overrides=TINY, eval_images=8)
    torch.manual_seed(1)  # the same preset with other weights
    checkpoint.save(registry.build("tokenizer", "vq-f4-shapes", **TINY), root / "other" / "model")
    train_generator("dalle", root / "tok", "shapes", root / "gen", cfg, preset="dalle-tiny", num_images=16,
                    cache_dir=root / "cache")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "red.png")
    (root / "notes.txt").write_text("not an image\n")
    (root / "fake.png").write_text("not a png either\n")
    (root / "a_dir").mkdir()
    for name, edit in {
        "version_string": lambda m: {**m, "format_version": "1"},
        "no_context": lambda m: {k: v for k, v in m.items() if k != "context"},
        "wide": lambda m: {**m, "config": {**m["config"], "channels": "wide"}},
    }.items():
        src = root / ("gen" if name == "no_context" else "tok") / "model"
        dst = root / "broken" / name
        shutil.copytree(src, dst)
        meta = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(edit(meta)))
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
    return out


# (command line with {placeholders} under the world, expected exit code, words the message must hold)
CASES = [
    # train tokenizer: numbers out of range, bad overrides, runs that exist
    ("train tokenizer --preset vq-f4-shapes --steps 0 --out {new}", 2, ["--steps", "0"]),
    ("train tokenizer --preset vq-f4-shapes --steps -5 --out {new}", 2, ["--steps", "-5"]),
    ("train tokenizer --preset vq-f4-shapes --steps ten --out {new}", 2, ["--steps", "ten"]),
    ("train tokenizer --preset vq-f4-shapes --batch-size 0 --out {new}", 2, ["--batch-size"]),
    ("train tokenizer --preset vq-f4-shapes --batch-size -3 --out {new}", 2, ["--batch-size"]),
    ("train tokenizer --preset vq-f4-shapes --grad-accum 0 --out {new}", 2, ["--grad-accum"]),
    ("train tokenizer --preset vq-f4-shapes --size 0 --out {new}", 2, ["--size"]),
    ("train tokenizer --preset vq-f4-shapes --ema 1.5 --out {new}", 1, ["--ema", "1.5"]),
    ("train tokenizer --preset vq-f4-shapes --ema -0.1 --out {new}", 1, ["--ema"]),
    ("train tokenizer --preset vq-f4-shapes --lr 0 --out {new}", 1, ["--lr"]),
    ("train tokenizer --preset vq-f4-shapes --seed -1 --out {new}", 2, ["--seed"]),
    ("train tokenizer --preset vq-f4-shapes --seed 9223372036854775808 --out {new}", 2, ["--seed"]),
    ("train tokenizer --preset vq-f4-shapes --warmup 0 --out {new}", 2, ["--warmup"]),
    ("train tokenizer --preset vq-f4-shapes --eval-every 0 --out {new}", 2, ["--eval-every"]),
    ("train tokenizer --preset vq-f4-shapes --save-every -1 --out {new}", 2, ["--save-every"]),
    ("train tokenizer --preset vq-f4-shapes --workers -1 --out {new}", 2, ["--workers"]),
    ("train tokenizer --preset vq-f4-shapes --bf16 --fp16 --out {new}", 2, ["--fp16"]),
    ("train tokenizer --preset vq-f4-shapes --gan -1 --out {new}", 1, ["--gan", "-1"]),
    ("train tokenizer --preset vq-f4-shapes --perceptual -0.5 --out {new}", 1, ["--perceptual"]),
    ("train tokenizer --preset vq-f4-shapes --gan-start -1 --out {new}", 2, ["--gan-start"]),
    ("train tokenizer --preset vq-f4-shapes --set channels=abc --out {new}", 1, ["channels", "abc"]),
    ("train tokenizer --preset vq-f4-shapes --set channels=-4 --out {new}", 1, ["channels", "-4"]),
    ("train tokenizer --preset vq-f4-shapes --set channels --out {new}", 1, ["--set", "KEY=VALUE"]),
    ("train tokenizer --preset vq-f4-shapes --set nosuchfield=3 --out {new}", 1, ["nosuchfield"]),
    ("train tokenizer --preset nope --out {new}", 2, ["--preset", "nope"]),
    ("train tokenizer --preset vq-f4-shapes --data {root}/missing --out {new}", 1, ["missing"]),
    ("train tokenizer --preset vq-f4-shapes --out {root}/notes.txt", 1, ["notes.txt", "is a file"]),
    ("train tokenizer --preset vq-f4-shapes --out {root}/tok " + " ".join(SET_TINY), 1, ["already holds a run"]),
    ("train tokenizer --preset patch4-8bit --out {root}/tok", 1, ["already holds a run"]),
    ("train tokenizer --preset vq-f4-shapes --resume --steps 1 --out {root}/tok " + " ".join(SET_TINY), 0, []),
    ("train tokenizer --preset vq-f4-shapes --resume --steps 4 --out {root}/tok --set channels=16", 1, ["config differs"]),
    ("train tokenizer --preset vq-f4-shapes --resume --out {new}", 1, ["--resume", "no checkpoint"]),
    # train generator
    ("train generator --kind dalle --tokenizer {root}/missing --out {new}", 1, ["missing"]),
    ("train generator --kind dalle --tokenizer {root}/gen --out {new}", 1, ["generator", "tokenizer"]),
    ("train generator --kind dalle --tokenizer {root}/tok --out {root}/gen", 1, ["already holds a run"]),
    ("train generator --kind dalle --tokenizer {root}/tok --text-length 5 --out {root}/gen", 1, ["already holds a run"]),
    ("train generator --kind dalle --preset dalle-tiny --tokenizer {root}/other --resume --steps 4 --out {root}/gen", 1,
     ["--resume", "hash"]),
    ("train generator --kind dalle --preset dalle-tiny --tokenizer {root}/tok --resume --steps 4 --text-length 7 "
     "--out {root}/gen", 1, ["text length", "7"]),
    ("train generator --kind dalle --tokenizer {root}/tok --num-images 0 --out {new}", 2, ["--num-images"]),
    ("train generator --kind dalle --tokenizer {root}/tok --text-length 0 --out {new}", 2, ["--text-length"]),
    ("train generator --kind nope --tokenizer {root}/tok --out {new}", 2, ["--kind", "nope"]),
    ("train generator --kind dalle --preset muse-tiny --tokenizer {root}/tok --out {new}", 1, ["muse-tiny", "dalle"]),
    ("train generator --kind dalle --preset nope --tokenizer {root}/tok --out {new}", 1, ["nope"]),
    # generate
    ("generate hi --generator {root}/gen --n 0", 2, ["--n"]),
    ("generate hi --generator {root}/gen --temperature -1", 1, ["--temperature"]),
    ("generate hi --generator {root}/gen --top-k 0", 1, ["--top-k"]),
    ("generate hi --generator {root}/gen --top-p 1.5", 1, ["--top-p"]),
    ("generate hi --generator {root}/gen --cfg-scale -1", 1, ["--cfg-scale"]),
    ("generate hi --generator {root}/gen --cfg-scale nan", 1, ["--cfg-scale"]),
    ("generate hi --generator {root}/gen --sample-steps 0", 1, ["--sample-steps"]),
    ("generate hi --generator {root}/gen --seed -1", 2, ["--seed"]),
    ("generate hi --generator {root}/gen --batch-size 0", 2, ["--batch-size"]),
    ("generate hi --generator {root}/missing", 1, ["missing"]),
    ("generate hi --generator {root}/tok", 1, ["tokenizer", "expected a generator"]),
    ("generate hi --generator {root}/gen --tokenizer {root}/other", 1, ["is not the tokenizer"]),
    ("generate hi --generator {root}/gen --out {root}/a_dir", 1, ["a_dir", "directory"]),
    ("generate hi --generator {root}/gen --device banana", 1, ["--device", "banana"]),
    ("generate hi --generator {root}/broken/no_context", 1, ["context"]),
    ("generate hi --generator {root}/gen --scheduler euler", 2, ["--scheduler", "euler"]),
    ("generate hi --generator {root}/gen --budget 0", 2, ["--budget"]),
    ("generate hi --generator {root}/gen --budget 3", 1, ["budget", "1D"]),
    ("generate hi --generator {root}/gen --decoder {root}/gen", 1, ["generator checkpoint", "expected a decoder"]),
    ("generate hi --generator {root}/gen --init {root}/red.png", 1, ["--init and --box"]),
    ("generate hi --generator {root}/gen --box 0,0,.5,.5", 1, ["--init and --box"]),
    ("generate hi --generator {root}/gen --init {root}/red.png --box .5,0,.2,1", 1, ["--box", "x0 < x1"]),
    ("generate hi --generator {root}/gen --init {root}/red.png --box 0,0,2,1", 1, ["--box", "[0, 1]"]),
    ("generate hi --generator {root}/gen --init {root}/red.png --box 0,0,1", 1, ["--box"]),
    ("generate hi --generator {root}/gen --init {root}/notes.txt --box 0,0,.5,.5", 1, ["notes.txt"]),
    ("generate hi --generator {root}/gen --rerank 0", 2, ["--rerank"]),
    ("generate hi --generator {root}/gen --rerank 2 --scorer {root}/tok", 1, ["tokenizer", "expected a features"]),
    ("train generator --kind diffusion --tokenizer {root}/tok --out {new}", 1, ["continuous", "ae-f4-shapes"]),
    ("train decoder --tokenizer {root}/missing --out {new}", 1, ["missing"]),
    ("train decoder --tokenizer {root}/tok --preset nope --out {new}", 2, ["--preset", "nope"]),
    ("train decoder --tokenizer {root}/tok --steps 0 --out {new}", 2, ["--steps"]),
    ("train decoder --tokenizer {root}/tok --out {root}/gen", 1, ["already holds a run"]),
    # tokenize / reconstruct
    ("tokenize {root}/missing.png --tokenizer {root}/tok --out {new}.safetensors", 1, ["missing.png"]),
    ("tokenize {root}/fake.png --tokenizer {root}/tok --out {new}.safetensors", 1, ["fake.png"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --out {root}/a_dir", 1, ["a_dir", "directory"]),
    ("tokenize {root}/red.png --tokenizer {root}/missing --out {new}.safetensors", 1, ["missing"]),
    ("tokenize {root}/red.png --tokenizer {root}/gen --out {new}.safetensors", 1, ["generator", "tokenizer"]),
    ("tokenize {root}/red.png --tokenizer {root}/broken/version_string --out {new}.safetensors", 1, ["format_version"]),
    ("tokenize {root}/red.png --tokenizer {root}/broken/wide --out {new}.safetensors", 1, ["channels", "wide"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --budget 4 --out {new}.safetensors", 1, ["takes no prompt"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --box 0.5,0.1,0.2,0.4 --out {new}.safetensors", 1, ["takes no prompt"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --box 1,2 --out {new}.safetensors", 1, ["--box", "x0,y0,x1,y1"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --budget many --out {new}.safetensors", 1, ["--budget", "many"]),
    ("tokenize {root}/red.png --tokenizer {root}/tok --budget auto --out {new}.safetensors", 1, ["--target-psnr"]),
    ("reconstruct {root}/red.png --tokenizer {root}/tok --budgets 0 --out {new}.png", 2, ["--budgets"]),
    ("reconstruct {root}/red.png --decoder {root}/tok --out {new}.png", 1, ["tokenizer checkpoint", "expected a decoder"]),
    ("reconstruct {root}/red.png --out {new}.png", 1, ["--tokenizer"]),
    ("reconstruct {root}/missing.png --tokenizer {root}/tok --out {new}.png", 1, ["missing.png"]),
    ("reconstruct {root}/red.png --tokenizer {root}/tok --out {root}/a_dir", 1, ["a_dir", "directory"]),
    ("reconstruct {root}/notes.txt --tokenizer {root}/tok --out {new}.png", 1, ["notes.txt"]),
    # eval
    ("eval reconstruction --tokenizer {root}/tok --n 0 --out {new}", 2, ["--n"]),
    ("eval reconstruction --tokenizer {root}/tok --n -5 --out {new}", 2, ["--n"]),
    ("eval reconstruction --tokenizer {root}/tok --batch-size 0 --out {new}", 2, ["--batch-size"]),
    ("eval reconstruction --tokenizer {root}/missing --out {new}", 1, ["missing"]),
    ("eval reconstruction --tokenizer {root}/tok --features banana --out {new}", 2, ["--features"]),
    ("eval reconstruction --tokenizer {root}/tok --split all", 1, ["--split all", "shapes"]),
    ("eval reconstruction --tokenizer {root}/tok --split bogus", 2, ["--split"]),
    ("eval generation --generator {root}/gen --cfg-scale 1 -1 --out {new}", 1, ["--cfg-scale"]),
    ("eval generation --generator {root}/gen --top-p 0 --out {new}", 1, ["--top-p"]),
    ("eval generation --generator {root}/missing --out {new}", 1, ["missing"]),
    ("eval generation --generator {root}/gen --seed -1 --out {new}", 2, ["--seed"]),
    ("eval tradeoff --tokenizers {root}/tok {root}/missing --out {new}", 1, ["missing"]),
    # data, import, list, the root parser
    ("data preview shapes --n 0 --out {new}.png", 2, ["--n"]),
    ("data preview shapes --size 0 --out {new}.png", 2, ["--size"]),
    ("data preview {root}/missing --out {new}.png", 1, ["missing"]),
    ("data preview shapes --n 2 --out {root}/a_dir", 1, ["a_dir", "directory"]),
    ("import diffusers-vq {root}/missing --out {new}", 1, ["missing"]),
    ("import diffusers-vq {root}/missing --out {root}/tok", 1, ["--out", "already exists"]),
    ("import diffusers-vq {root}/missing --out {root}/notes.txt", 1, ["notes.txt", "already exists"]),
    ("import diffusers-vq {root}/missing --image-size 0 --out {new}", 2, ["--image-size"]),
    ("list nope", 2, ["nope"]),
    ("frobnicate", 2, ["frobnicate"]),
]


def test_the_sweep_is_wide():
    print(f"\nbad-input sweep: {len(CASES)} cases")
    assert len(CASES) >= 60
    families = {case[0].split()[0] for case in CASES}
    assert {"train", "generate", "tokenize", "reconstruct", "eval", "data", "import", "list"} <= families
    assert {"tokenizer", "generator", "decoder"} <= {c[0].split()[1] for c in CASES if c[0].startswith("train ")}


@pytest.mark.parametrize("line,code,words", CASES, ids=[c[0][:70] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(world, tmp_path, capsys, line, code, words):
    argv = line.format(root=world, new=tmp_path / "new").split()
    before = _snapshot(world)
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse: a command line that does not parse
        rc = exit_.code
    out, err = capsys.readouterr()
    assert rc == code, (rc, out[-500:], err[-500:])
    assert "Traceback" not in out + err
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        for word in words:
            assert word in lines[0], (word, lines[0])
    assert _snapshot(world) == before, "a refused command changed an existing file"
