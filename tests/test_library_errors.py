"""The library speaks its own words; only the CLI speaks in flags.

A message raised or printed outside ``trilemma/cli`` and ``trilemma/demo`` names the config field,
function argument or file (in backticks: `lr`, `resume=True`, `split='all'`), never a ``--flag``
a Python user never typed; the CLI's one table (``options.FLAGS``) turns those names back into
flags where ``main`` prints an error (``tests/test_bad_inputs.py`` checks what a CLI user sees).
"""

import argparse
import ast
import re
from pathlib import Path

import pytest

from trilemma import checkpoint
from trilemma.cli.main import build_parser
from trilemma.cli.options import FLAGS, in_flags
from trilemma.pipeline import check_box
from trilemma.studies.images import check_split
from trilemma.tokenizers.losses import LossConfig
from trilemma.training.generator import train_generator
from trilemma.training.loop import TrainConfig, TrainingError, check_run_dir

PACKAGE = Path(__file__).resolve().parents[1] / "trilemma"
FLAG = re.compile(r"(?<![\w-])--[a-z]")  # --lr, not a rule of dashes, x--y or a "--" linestyle


def _message_strings(node: ast.AST) -> list[str]:
    """The string literals under ``node``; an f-string with each {value} as "x" (so f"--{flag}" is seen)."""
    out, parts = [], set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "x" for v in sub.values))
            parts.update(id(v) for v in sub.values)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in parts:
            out.append(sub.value)
    return out


def _is_notice(node: ast.AST) -> bool:
    """A call that shows a user a message: print(...) or warnings.warn(...)."""
    if not isinstance(node, ast.Call):
        return False
    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
    return name in ("print", "warn")


def flags_in_messages(source: str) -> tuple[int, list[tuple[int, str]]]:
    """How many raise / print / warn statements ``source`` has, and (line, text) of each flag in their strings."""
    seen, bad = 0, []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) or _is_notice(node):
            seen += 1
            bad += [(node.lineno, s) for s in _message_strings(node) if FLAG.search(s)]
    return seen, bad


def test_the_scan_catches_a_flag_in_a_message():
    src = ('def f(flag, n):\n'
           '    print(f"notice: --split all: {n}")\n'
           '    raise ValueError(f"--{flag} must be >= 1, got {n}")\n'
           'def g(n):\n'
           '    raise ValueError(f"`lr` must be > 0, got {n}; x--y stays")\n')
    seen, bad = flags_in_messages(src)
    assert seen == 3 and sorted(line for line, _ in bad) == [2, 3]


def test_no_message_outside_the_cli_names_a_flag():
    seen, bad = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("cli", "demo"):
            continue
        n, found = flags_in_messages(path.read_text())
        seen += n
        bad += [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}" for line, text in found]
    assert seen > 200  # the scan saw the library's messages
    assert not bad, "name the field or argument (`lr`, `resume=True`), not the flag:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the Python API's words


def _assert_library_words(err: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(err.value)
    assert "--" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)


@pytest.mark.parametrize("fields,name", [
    ({"lr": -1}, "`lr` must be > 0, got -1"),
    ({"ema_decay": 1.5}, "`ema_decay` must be in [0, 1)"),
    ({"seed": -1}, "`seed`"),
    ({"num_workers": -1}, "`num_workers` must be >= 0"),
    ({"warmup_steps": 0}, "`warmup_steps` must be an integer >= 1"),
    ({"steps": 0}, "`steps` must be an integer >= 1"),
])
def test_a_bad_train_config_names_the_field(fields, name):
    with pytest.raises(ValueError) as err:
        TrainConfig(**fields)
    _assert_library_words(err, name)


def test_a_bad_loss_weight_names_the_field():
    with pytest.raises(ValueError) as err:
        LossConfig(gan_weight=-1)
    _assert_library_words(err, "`gan_weight` must be >= 0, got -1")


def test_a_run_directory_names_out_and_resume(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / checkpoint.CONFIG_FILE).write_text("{}")
    with pytest.raises(TrainingError) as err:
        check_run_dir(tmp_path / "run", resume=False)
    _assert_library_words(err, "already holds a run", "`resume=True`", "`out`")
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError) as err:
        check_run_dir(tmp_path / "file", resume=False)
    _assert_library_words(err, "`out`", "is a file")


def test_a_budget_on_grid_tokens_names_the_argument(tmp_path, tiny_vq):
    tok = checkpoint.save(tiny_vq, tmp_path / "tok")
    cfg = TrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError) as err:
        train_generator("dalle", tok, "shapes", tmp_path / "gen", cfg, preset="dalle-tiny", budget=4)
    _assert_library_words(err, "`budget` needs a promptable tokenizer")
    assert not (tmp_path / "gen").exists()  # refused before any work


def test_split_features_box_and_tokenizer_dir_are_named():
    for call, words in [
        (lambda: check_split("shapes", "bogus"), "`split` must be one of"),
        (lambda: check_split("shapes", "all"), "`split='all'` takes every image of a folder"),
        (lambda: check_box((0.5, 0.0, 0.2, 1.0)), "`box` must be x0,y0,x1,y1"),
    ]:
        with pytest.raises(ValueError) as err:
            call()
        _assert_library_words(err, words)


def test_a_checkpoint_without_a_tokenizer_record_names_tokenizer_dir(tmp_path, tiny_vq):
    model_dir = checkpoint.save(tiny_vq, tmp_path / "m")
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.recorded_tokenizer(model_dir)
    _assert_library_words(err, "records no tokenizer", "`tokenizer_dir`")


# ----------------------------------------------------------------------------- the CLI's table


@pytest.mark.parametrize("library,cli", [
    ("`lr` must be > 0, got -1.0", "--lr must be > 0, got -1.0"),
    ("`TrainConfig.warmup_steps` must be an integer >= 1", "--warmup must be an integer >= 1"),
    ("/x already holds a run; pass `resume=True` to continue it or choose a new `out`",
     "/x already holds a run; pass --resume to continue it or choose a new --out"),
    ("`resume=True`: the run's text length is 5, not `text_length=7`", "--resume: the run's text length is 5, not --text-length 7"),
    ("`split='all'` takes every image of a folder", "--split all takes every image of a folder"),
    ("use `features='inception'` (or `features='none'`)", "use --features inception (or --features none)"),
    ("`sampling.steps` must be >= 1, got 0", "--sample-steps must be >= 1, got 0"),
    ("`sampling.top_k` must be >= 1", "--top-k must be >= 1"),
    ("pass the one it was trained on as `tokenizer_dir`", "pass the one it was trained on as --tokenizer"),
    # only marked names: a bare word, a name inside another, a name with no flag stay as written
    ("output outside out/model: budget 3", "output outside out/model: budget 3"),
    ("`mixed_precision` must be one of ('no', 'bf16', 'fp16')", "`mixed_precision` must be one of ('no', 'bf16', 'fp16')"),
    ("see `trilemma train --help`", "see `trilemma train --help`"),
])
def test_the_cli_turns_library_names_into_flags(library, cli):
    assert in_flags(library) == cli
    assert in_flags(cli) == cli  # nothing left to translate


def _cli_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _cli_flags(sub)
    return flags


def test_every_flag_in_the_table_is_a_real_flag():
    assert set(FLAGS.values()) <= _cli_flags(build_parser())


def test_a_library_error_reaches_the_cli_user_as_the_flag(tmp_path, capsys):
    from trilemma.cli import main

    assert main(["train", "tokenizer", "--preset", "vq-f4-shapes", "--lr", "-1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --lr must be > 0, got -1") and "`" not in err
