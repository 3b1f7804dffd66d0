"""Sampling cost per family: seconds per image at batch 1 and 64, tokens and network passes per
second, one teacher-forced forward beside it; optionally KV-cached against uncached decoding and
eager against ``torch.compile``d steps, side by side.

Each generator gets the tokens it models for an image of ``--tokens`` positions (side x side): ids
on that grid; VAR the maps of a multi-scale tokenizer ending at that side (one pass per scale); MAR
and diffusion 4-d latents on it. ``passes`` counts the forward calls of the generator's largest
network in one request (a token each for DALL-E and Parti, a decoding step for Muse, a scale for
VAR, an autoregressive step for MAR, whose head denoises besides, a denoising step for diffusion);
``sample_s`` is the request's seconds, ``s_per_image`` that over the batch. Greedy, random weights:
timing only.

``--uncached`` adds the autoregressive families' uncached decoding (every step recomputes the whole
prefix, ~N/2 times the arithmetic; target of issue "Generators I": >= 20x the cached one at 256
tokens, batch 16). ``--compile`` adds a row per batch sampled through ``compile_steps`` (families
that have it), timed interleaved with the eager one; ``first_s`` is its first call, compiling
included.

``--against REV`` times the same eager rows with the package as of git revision REV (``git archive``
into a temporary folder, imported there by a subprocess per family, run just before this
process's own timing of that family): ``previous_s_per_image`` and ``speedup`` (previous over
now, > 1 is faster now) show each family against an earlier commit on one machine in one run.

    .venv/bin/python bench/bench_sampling.py [--tokens 256] [--batches 1 64] [--generators dalle-shapes ...]
        [--bf16] [--compile] [--uncached] [--against REV] [--repeat 2] [--threads 1] [--name sampling]
        (writes bench/results/NAME.json)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, best_times, report  # noqa: E402

from trilemma import registry  # noqa: E402
from trilemma.data.text import TextTokenizer  # noqa: E402
from trilemma.generators.sampling import SamplingConfig  # noqa: E402
from trilemma.tokens import Tokens, TokenSpec  # noqa: E402

GREEDY = SamplingConfig(temperature=0)
SCALES = {4: (1, 2, 3, 4), 8: (1, 2, 3, 4, 6, 8), 16: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}  # VAR's schedules for 4x4, 8x8, 16x16 maps
FAMILIES = ["dalle-shapes", "parti-shapes", "muse-shapes", "var-shapes", "mar-shapes", "diffusion-shapes"]
COLUMNS = ["generator", "dtype", "compiled", "batch", "tokens", "passes", "sample_s", "s_per_image", "tokens_per_s",
           "passes_per_s", "first_s", "forward_s", "sample/forward", "uncached_s", "uncached/sample",
           "previous_s_per_image", "speedup"]


def spec_for(preset: str, side: int) -> TokenSpec:
    """The tokens ``preset``'s family models for a side x side image of tokens."""
    cls = registry.model_class("generator", registry.get_preset("generator", preset).model)
    if "discrete" not in cls.accepts:
        return TokenSpec("continuous", side * side, latent_dim=4, grid=(side, side))
    grid = TokenSpec("discrete", side * side, vocab_size=1024, grid=(side, side))
    try:
        cls.check_spec(grid)
        return grid
    except ValueError:  # a next-scale model: the maps of a multi-scale tokenizer
        scales = SCALES[side]
        return TokenSpec("discrete", sum(s * s for s in scales), vocab_size=1024, scales=scales)


def random_tokens(spec: TokenSpec, batch: int) -> Tokens:
    if spec.discrete:
        return Tokens(ids=torch.randint(spec.vocab_size, (batch, spec.max_tokens)))
    return Tokens(latents=torch.randn(batch, spec.max_tokens, spec.latent_dim))


def count_passes(gen: torch.nn.Module, sample) -> int:
    """Forward calls of ``gen``'s largest child network during ``sample()`` (eager)."""
    net = max(gen.children(), key=lambda m: sum(p.numel() for p in m.parameters()))
    calls = []
    handle = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        sample()
    finally:
        handle.remove()
    return len(calls)


def bench_batch(preset: str, gen, spec, text, batch: int, dtype: str, args) -> list[dict]:
    """The rows of one generator at one batch size and precision: eager, and compiled if asked."""
    prompts = text.encode(["a large red circle at the top left"] * batch)
    inputs = gen.model_input(random_tokens(spec, batch))
    ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")  # noqa: E731

    def sample(compiled: bool = False, **kw):
        def run():
            if hasattr(gen, "compile_steps"):  # absent before compilation existed (--against an old revision)
                gen.compile_steps(compiled)
            with ctx():
                gen.sample(prompts, GREEDY, **kw)
        return run

    def forward():
        with torch.no_grad(), ctx():
            gen(inputs, prompts)

    passes = count_passes(gen, sample())  # also the eager warm-up
    variants = {"eager": sample()}
    first = {}
    if args.compile and gen.compiles:
        t = time.perf_counter()
        sample(compiled=True)()
        first["compiled"] = time.perf_counter() - t
        variants["compiled"] = sample(compiled=True)
    times = best_times(variants, repeat=args.repeat)
    t_fwd = best_time(forward)
    t_uncached = None
    if args.uncached and "use_cache" in inspect.signature(gen.sample).parameters:
        t_uncached = best_time(sample(use_cache=False), repeat=1, warmup=0)
    rows = []
    for name, t in times.items():
        rows.append({
            "generator": preset, "dtype": dtype, "compiled": name == "compiled", "batch": batch,
            "tokens": spec.max_tokens, "passes": passes, "sample_s": t, "s_per_image": t / batch,
            "tokens_per_s": batch * spec.max_tokens / t, "passes_per_s": passes / t, "first_s": first.get(name),
            "forward_s": t_fwd, "sample/forward": t / t_fwd,
            "uncached_s": t_uncached if name == "eager" else None,
            "uncached/sample": t_uncached / t if t_uncached and name == "eager" else None,
        })
    return rows


def checkout(rev: str, into: Path) -> Path:
    """The ``trilemma`` package as of git revision ``rev``, unpacked under ``into``."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "trilemma"], capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"--against {rev}: git archive failed: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryFile() as f:
        f.write(archive.stdout)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def previous_rows(tree: Path, preset: str, args) -> list[dict]:
    """This bench's eager rows for ``preset`` with the package in ``tree`` (a subprocess)."""
    out = tree / f"{preset}.json"
    cmd = [sys.executable, __file__, "--generators", preset, "--tokens", str(args.tokens), "--repeat", str(args.repeat),
           "--batches", *map(str, args.batches), "--rows-json", str(out)]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--generators", nargs="+", default=FAMILIES)
    ap.add_argument("--bf16", action="store_true", help="also time under bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also time sampling through compile_steps")
    ap.add_argument("--uncached", action="store_true", help="also time uncached autoregressive decoding (slow)")
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds per variant (the best counts)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--against", metavar="REV", help="also time the eager rows with the package as of this git revision")
    ap.add_argument("--name", default="sampling", help="results file: bench/results/NAME.json")
    ap.add_argument("--rows-json", help=argparse.SUPPRESS)  # --against's subprocess: its rows, no report
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    side = int(args.tokens**0.5)
    text = TextTokenizer.build(["a large red circle at the top left and a small blue square"], max_length=16)
    if args.rows_json:
        import trilemma
        print(f"timing the package at {Path(trilemma.__file__).parent}", flush=True)
    tree = checkout(args.against, Path(tempfile.mkdtemp(prefix="trilemma-against-"))) if args.against else None
    rows = []
    for preset in args.generators:
        previous = {(r["dtype"], r["batch"]): r["s_per_image"] for r in previous_rows(tree, preset, args)} if tree else {}
        torch.manual_seed(0)
        spec = spec_for(preset, side)
        gen = registry.build("generator", preset, spec=spec, text=text).eval()
        for dtype in (["fp32", "bf16"] if args.bf16 else ["fp32"]):
            for batch in args.batches:
                for row in bench_batch(preset, gen, spec, text, batch, dtype, args):
                    old = previous.get((dtype, batch)) if not row["compiled"] else None
                    rows.append({**row, "previous_s_per_image": old, "speedup": old / row["s_per_image"] if old else None})
                    print(rows[-1], flush=True)
    if args.rows_json:
        Path(args.rows_json).write_text(json.dumps(rows))
        return
    if tree:
        shutil.rmtree(tree)
    report(args.name, rows, COLUMNS,
           {"targets": {"uncached/sample": ">= 20 (autoregressive, 256 tokens, batch 16)",
                        "sample/forward": "<= 3 (autoregressive, 256 tokens, batch 16)"},
            "against": args.against, "command": " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
