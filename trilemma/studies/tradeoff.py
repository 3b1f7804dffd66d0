"""The compact / lossless / discrete trade-off: sweep tokenizers over the same held-out images.

Every tokenizer is scored by ``evaluate_reconstruction`` on one fixed set of test images (the
dataset's test split, first ``n`` items), so rows are directly comparable. The Pareto front of
bits per image against PSNR (``pareto_front``) shows which tokenizers are worth their bits, and
``trilemma_weights`` places each tokenizer between the three corners of the trilemma. A continuous
tokenizer sits at its effective bits (``metrics.bits``: the entropy of its latents quantized as
coarsely as costs 0.1 dB), not at the 32 bits per float it would take to store them.

rFID is measured only when the set has more images than the features have dimensions, beside its
floor: the FID between the evaluated images and the next ``n`` of the same split, two disjoint real
sets of one size (``metrics.reconstruction.rfid_left_out``). Every row carries its ``protocol``.

Features for rFID (``features=``):
- ``"auto"`` (default): ``"domain"`` on shapes, ``"inception"`` on a folder; a folder without the
  Inception weights is still evaluated, with rFID left empty and a notice saying why.
- ``"domain"``: the shapes probe's CNN (``trilemma.metrics.probe``), trained once in the run
  directory ``probe_cache`` (default ``out_dir/probe``). Shapes only: a folder has no attributes to train it.
- ``"inception"``: the FID Inception-v3 from disk; missing weights are an error.
- ``None`` / ``"none"``: no rFID (fast).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trilemma import checkpoint
from trilemma.checkpoint import resolve_checkpoint
from trilemma.images import save_grid
from trilemma.metrics import scores
from trilemma.metrics.bits import FLOAT_BITS, TOLERANCE_DB
from trilemma.metrics.reconstruction import evaluate_reconstruction, rfid_left_out
from trilemma.pipeline import load_tokenizer
from trilemma.studies.images import load_images, resolve_features
from trilemma.studies.region import check_region, region_report
from trilemma.tokens import Prompt

PSNR_FLOOR, PSNR_LOSSLESS = 10.0, 50.0  # dB mapped to fidelity 0 and 1 in the trilemma triangle


# ----------------------------------------------------------------------------- Pareto front


def _usable(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def pareto_front(points: Sequence[tuple[float | None, float | None]], maximize: bool = True) -> list[int]:
    """Indices of the non-dominated points of ``(cost, value)`` pairs, sorted by cost then index.

    The cost (bits per image) is minimised; the value is maximised (PSNR) or, with
    ``maximize=False``, minimised (rFID). A point is dominated when another point is at least as
    good on both axes and strictly better on one; equal points are all kept. Points with a
    ``None`` or NaN coordinate are never on the front; ``inf`` (a lossless PSNR) is allowed.
    """
    sign = 1.0 if maximize else -1.0
    valid = [(i, float(c), sign * float(v)) for i, (c, v) in enumerate(points) if _usable(c) and _usable(v)]
    front = []
    for i, c, v in valid:
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for j, c2, v2 in valid if j != i)
        if not dominated:
            front.append((c, i))
    return [i for _, i in sorted(front)]


def discrete_front(rows: Sequence[dict], metric: str = "psnr") -> list[int]:
    """Row indices on the front of bits per image vs ``metric`` (PSNR up, anything else down),
    among discrete tokenizers: a continuous one's effective bits are an estimate, not a code a
    token generator could model, so they are plotted beside the front, not on it."""
    discrete = [i for i, r in enumerate(rows) if r.get("discrete")]
    points = [(rows[i].get("bits_per_image"), rows[i].get(metric)) for i in discrete]
    return [discrete[k] for k in pareto_front(points, maximize=metric == "psnr")]


# ----------------------------------------------------------------------------- tokenizers


def tokenizer_name(directory: str | Path) -> str:
    """The preset recorded in the checkpoint, else the directory name (the run's, for run/model)."""
    ckpt = resolve_checkpoint(directory)
    meta = checkpoint.read_config(ckpt, kind="tokenizer")
    if meta.get("preset"):
        return str(meta["preset"])
    path = Path(directory).resolve()
    return path.parent.name if path.name == "model" else path.name


def _unique(names: list[str], dirs: list[Path]) -> list[str]:
    """Two runs of one preset get their directory name appended, so rows stay distinguishable."""
    out = []
    for name, d in zip(names, dirs):
        if names.count(name) > 1:
            d = d.resolve()
            name = f"{name} ({d.parent.name if d.name == 'model' else d.name})"
        out.append(name)
    return out


def make_row(name: str, directory: Path, tok, metrics: dict) -> dict:
    """One report row: the tokenizer's identity and token layout, then its metrics."""
    spec = tok.spec
    row = {
        "tokenizer": name,
        "path": str(directory),
        "model": getattr(tok, "registry_name", type(tok).__name__),
        "image_size": tok.image_size,
        "discrete": bool(metrics.get("discrete", spec.discrete)),
        "vocab_size": spec.vocab_size,
        "levels": spec.levels,
        "latent_dim": spec.latent_dim,
        # pixels per token side on a grid (f8: 8x8 pixels a token; multi-scale: at the finest scale); None for 1D tokens
        "downsampling": tok.image_size // (spec.grid[1] if spec.grid else spec.scales[-1]) if spec.grid or spec.scales else None,
    }
    native = getattr(tok, "native_image_size", tok.image_size)
    if native != tok.image_size:  # a convolutional tokenizer run at another size than it was trained at
        row.update(native_image_size=native, trained=f"at {native}x{native}")
    row.update(metrics)
    if row.get("floats_per_image") is None and not row["discrete"] and row.get("tokens_per_image") is not None:
        row["floats_per_image"] = row["tokens_per_image"] * spec.latent_dim
    if not row["discrete"]:
        row["bits_per_image"] = None  # no code: effective_bits_per_image and storage_bits_per_image instead
        if row.get("storage_bits_per_image") is None and row.get("floats_per_image") is not None:
            row["storage_bits_per_image"] = FLOAT_BITS * row["floats_per_image"]
    return row


def tradeoff(
    tokenizer_dirs: Sequence[str | Path],
    data: str = "shapes",
    n: int = 1000,
    size: int | None = None,
    seed: int = 0,
    features: str | None = "auto",
    out_dir: str | Path | None = None,
    *,
    probe_cache: str | Path | None = None,
    batch_size: int = 64,
    lpips: bool = True,
    progress: bool = True,
    evaluate: Callable[..., dict] | None = None,
    device: str | torch.device = "cpu",
    decoder: str | Path | None = None,
    budgets: bool = True,
    split: str = "test",
    bits_step_images: int | None = None,
    region: str | None = None,
) -> list[dict]:
    """Evaluate every tokenizer on the same ``n`` held-out images; one row per tokenizer.

    All tokenizers are evaluated at one image size (``size``, or the size they share): bits per image
    are only comparable at one resolution. With ``size``, a convolutional tokenizer trained at another
    size runs at it (``checkpoint.load(image_size=)``; its row says ``trained`` at which); any other
    must have been trained at ``size``. Rows hold the tokenizer's name (preset or directory name),
    its path and token layout, every metric of ``evaluate_reconstruction`` and the ``protocol``
    they were measured under (``protocol()``); continuous tokenizers have ``bits_per_image=None`` and
    ``floats_per_image``, ``effective_bits_per_image`` and ``storage_bits_per_image`` instead. With
    features and more than their dimension in images, the next ``n`` images of the split are rFID's
    floor (``rfid_floor``); otherwise rFID is left out and the protocol says why. ``evaluate`` replaces
    ``evaluate_reconstruction`` (same signature), e.g. in tests. Tokenizers and features run on
    ``device``. With a token-conditioned ``decoder``, each tokenizer it was trained on gets a second
    row decoding the same tokens through it. With ``budgets``, a promptable tokenizer gets one row per
    budget of ``budget_sweep`` and a multi-scale one a row per prefix of its scales
    (``operating_points``; ``budget`` and ``curve`` set, so reports draw each as a line).
    ``split``: the images evaluated (``test``, held out, by default; ``all`` for a folder kept for testing).
    ``bits_step_images``: continuous tokenizers' effective-bits step is chosen on the first that many
    images (None: all; the bits count every image).
    ``region`` (``"boxes"``, ``"points"`` or ``"both"``): each promptable tokenizer's region study on
    the same images (``studies.region.region_report``, at the budgets of ``budget_sweep``), under
    ``region`` in its last row; at least one tokenizer must be promptable.
    """
    if not tokenizer_dirs:
        raise ValueError("tradeoff needs at least one tokenizer directory")
    check_region(region)
    evaluate = evaluate if evaluate is not None else evaluate_reconstruction
    dirs = [resolve_checkpoint(d) for d in tokenizer_dirs]
    names = _unique([tokenizer_name(d) for d in dirs], dirs)
    tokenizers = [checkpoint.load(d, kind="tokenizer", image_size=size).to(device) for d in dirs]
    if decoder is not None:
        dec_dir = resolve_checkpoint(decoder)
        own = checkpoint.recorded_tokenizer(dec_dir, kind="decoder")
        pairs = [(name, d) for name, d in zip(names, dirs) if d.resolve() == own.resolve()]
        if not pairs:
            raise ValueError(f"{dec_dir}: was trained on {own}, which is not among the tokenizers evaluated")
        decoder_name = checkpoint.read_config(dec_dir)["name"]
        for name, d in pairs:
            names.append(f"{name} + {decoder_name}")
            dirs.append(dec_dir)
            tokenizers.append(load_tokenizer(d, dec_dir).to(device))
    if region is not None and not any(getattr(tok, "promptable", False) for tok in tokenizers):
        raise ValueError(f"`region` studies a promptable tokenizer's box and point prompts; {', '.join(names)} "
                         f"{'takes' if len(names) == 1 else 'take'} no prompts (train one from a promptable-* preset)")

    sizes = {name: tok.image_size for name, tok in zip(names, tokenizers)}
    if size is None:
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k} {v}x{v}" for k, v in sizes.items())
            raise ValueError(f"the tokenizers take different image sizes ({listed}); compare tokenizers at one resolution")
        size = next(iter(sizes.values()))
    wrong = [f"{k} ({v}x{v})" for k, v in sizes.items() if v != size]
    if wrong:
        raise ValueError(f"size {size} does not fit {', '.join(wrong)}")

    if out_dir is not None and probe_cache is None:
        probe_cache = Path(out_dir) / "probe"
    feats = resolve_features(features, data, size, seed, probe_cache)
    if feats is not None:
        feats = feats.to(device)
    # rFID's floor: the next n images of the split, loaded only when rFID can be measured at all
    wanted = 2 * n if feats is not None and rfid_left_out(n, feats.dim, n) is None else n
    loaded, items = load_images(data, wanted, size, seed=seed, split=split, progress=progress)
    images = loaded[:n]
    floor = loaded[n : 2 * n] if len(loaded) == 2 * len(images) else None
    left_out = "no feature network" if feats is None else rfid_left_out(len(images), feats.dim, len(images))
    if left_out is None and floor is None:
        left_out = (f"the {split} split holds {len(loaded)} images, fewer than the {2 * len(images)} that "
                    f"{len(images)} evaluated and as many for the real-vs-real floor take")
    about = protocol(data, split, len(images), seed, size, features, feats, left_out, bits_step_images)
    if left_out is not None and feats is not None:
        print(f"notice: rFID left out, {left_out}")
        feats = None

    rows = []
    for i, (name, directory, tok) in enumerate(zip(names, dirs, tokenizers)):
        if progress and len(names) > 1:
            print(f"[{i + 1}/{len(names)}] {name}")
        for k, view, kw in operating_points(tok, budgets):
            torch.manual_seed(seed)  # stochastic tokenizers (sampled latents) see the same noise
            if bits_step_images is not None:
                kw["bits_step_images"] = bits_step_images
            if feats is not None:
                kw["floor_images"] = floor
            metrics = evaluate(view, images, features=feats, batch_size=batch_size, lpips=lpips, progress=progress, **kw)
            rows.append(make_row(name if k is None else f"{name} k={k}", directory, view, metrics))
            if k is not None:
                rows[-1].update(budget=k, curve=name)
            rows[-1]["protocol"] = dict(about)
        if region is not None and getattr(tok, "promptable", False):
            if progress:
                print(f"region study of {name}: {region}")
            rows[-1]["region"] = region_report(tok, images.to(device), items[: len(images)], region, budget_sweep(tok),
                                               data, split, seed, batch_size)
    return rows


@torch.no_grad()
def reconstruction_picture(rows: Sequence[dict], data: str, path: str | Path, count: int = 4, seed: int = 0,
                           split: str = "test", device: str | torch.device = "cpu") -> Path | None:
    """A PNG beside the table: the first ``count`` images ``tradeoff`` evaluated (the same ``data``,
    ``split`` and ``seed``), one row each, the original then every tokenizer's reconstruction (at its
    full budget, at the rows' image size), captioned with that image's PSNR. Rows another decoder
    drew (``path`` a decoder) are left out. Returns the path, or None when no row has a tokenizer."""
    wanted, seen = [], set()
    for row in rows:  # one column per tokenizer: a curve's rows share a path
        if row["path"] not in seen and checkpoint.read_config(row["path"]).get("kind") == "tokenizer":
            seen.add(row["path"])
            wanted.append((row.get("curve") or row["tokenizer"], row["path"]))
    if not wanted:
        return None
    size = rows[0]["image_size"]
    images = load_images(data, count, size, seed=seed, split=split, progress=False)[0].to(device)
    columns, names = [images], ["original"]
    for name, directory in wanted:
        tok = checkpoint.load(directory, kind="tokenizer", image_size=size).to(device)
        torch.manual_seed(seed)
        columns.append(tok.reconstruct(images).float())
        names.append(name)
    grid = torch.stack(columns, 1).flatten(0, 1).cpu()  # image-major: a row per image
    captions = [names[j] if j == 0 else f"{names[j]}: {scores.psnr(columns[j][i:i + 1], images[i:i + 1]).item():.1f} dB"
                for i in range(len(images)) for j in range(len(columns))]
    return save_grid(grid, path, captions=captions, nrow=len(columns), scale=1 if size >= 128 else None)


def protocol(data: str, split: str, images: int, seed: int, size: int, features: str | None, extractor,
             left_out: str | None, bits_step_images: int | None = None) -> dict:
    """How a trade-off row was measured, in words and numbers: which images (data, split, how
    many, seed), the feature network, whether rFID was measured (else why not: ``left_out``) and
    its floor, and how continuous tokenizers' effective bits are counted (the step chosen on the
    first ``bits_step_images`` images when fewer than all)."""
    chosen_on = ("every evaluated image" if bits_step_images is None or bits_step_images >= images
                 else f"the first {bits_step_images} evaluated images, the entropy counted on all {images}")
    network = "none" if extractor is None else f"{features} ({type(extractor).__name__}, {extractor.dim}-d)"
    measured = left_out is None
    return {
        "data": str(data), "split": split, "images": images, "seed": seed, "image_size": size, "features": network,
        "rfid": "measured: more images than feature dimensions" if measured else f"left out: {left_out}",
        "rfid_floor": (f"FID between the {images} evaluated images and the next {images} of the {split} split, "
                       "in the same features (rfid_floor in each row)") if measured else "none",
        "effective_bits": (f"continuous latents uniformly quantized at the coarsest step (octaves, then quarter "
                           f"octaves) costing <= {TOLERANCE_DB:g} dB PSNR, chosen on {chosen_on}; per-channel "
                           "entropy of the quantized values x tokens per image"),
    }


def operating_points(tok, budgets: bool = True) -> list[tuple[int | None, object, dict]]:
    """Where a tokenizer is evaluated, as (k, the tokenizer to evaluate, ``evaluate``'s keyword
    arguments): once (k None); with ``budgets``, a promptable one at each budget of ``budget_sweep``
    and a multi-scale one at each prefix of its scales (k its tokens, the last prefix all of them)."""
    if budgets and getattr(tok, "promptable", False):
        return [(k, tok, {"prompt": Prompt(budget=k)}) for k in budget_sweep(tok)]
    if budgets and tok.spec.scales:
        views = [tok.at_scales(count) for count in range(1, len(tok.spec.scales) + 1)]
        return [(view.spec.max_tokens, view, {}) for view in views]
    return [(None, tok, {})]


def budget_sweep(tok) -> list[int | None]:
    """The budgets a tokenizer is evaluated at: 1, 2, 4, ... and K for a promptable one, else its one setting."""
    if not getattr(tok, "promptable", False):
        return [None]
    k_max = tok.spec.max_tokens
    return sorted({2**i for i in range(k_max.bit_length()) if 2**i <= k_max} | {k_max})


# ----------------------------------------------------------------------------- trilemma geometry


def plot_bits(row: dict) -> float | None:
    """x position: bits per image (discrete) or effective bits per image (continuous); a
    continuous row without effective bits (no quantization step kept its PSNR) falls back to its
    float32 storage, 32 bits x floats (``stored_at_float32`` says which)."""
    if row.get("discrete"):
        return row.get("bits_per_image")
    if row.get("effective_bits_per_image") is not None:
        return row["effective_bits_per_image"]
    floats = row.get("floats_per_image")
    return row.get("storage_bits_per_image") or (None if floats is None else FLOAT_BITS * floats)


def stored_at_float32(row: dict) -> bool:
    """Whether ``plot_bits`` places this continuous row at float32 storage (no effective bits)."""
    return not row.get("discrete") and row.get("effective_bits_per_image") is None


def raw_bits(row: dict) -> float | None:
    """Bits of the raw 8-bit RGB image the tokenizer reads."""
    size = row.get("image_size")
    return None if not size else size * size * 3 * 8


def trilemma_weights(rows: Sequence[dict]) -> list[tuple[float, float, float] | None]:
    """Per row, normalised (compactness, fidelity, discreteness) in [0, 1]; None without bits or PSNR.

    - compactness ``c = log2(raw / bits) / log2(raw / fewest)``, clipped to [0, 1]: the log
      compression ratio against the raw 8-bit image (``raw = H*W*3*8`` bits), relative to the most
      compact tokenizer of the sweep (``fewest`` bits), so c = 0 at raw size and 1 for the most
      compact; a sweep where nothing compresses has c = 0 everywhere. Continuous latents count
      their effective bits (``plot_bits``), as in the plots.
    - fidelity ``f = clip((PSNR - 10 dB) / (50 dB - 10 dB), 0, 1)``: 10 dB is a useless blur,
      50 dB is within 8-bit rounding; a lossless (infinite) PSNR gives 1.
    - discreteness ``d = 1`` for ids from a finite vocabulary, else 0.

    The triangle position is the barycentric combination ``(c, f, d) / (c + f + d)`` of the corners
    compact, lossless and discrete (the centroid when all three are 0). A tokenizer with two of
    the properties lands on the edge between their corners, which is what the trilemma predicts.
    The normalisation loses the total: (1, 1, 1) and (0.1, 0.1, 0.1) both sit at the centroid,
    so the plot lists c, f, d beside it.
    """
    ratios = []
    for row in rows:
        bits, raw, psnr = plot_bits(row), raw_bits(row), row.get("psnr")
        ok = bits is not None and bits > 0 and raw is not None and psnr is not None and not math.isnan(psnr)
        ratios.append(math.log2(raw / bits) if ok else None)
    best = max((r for r in ratios if r is not None), default=0.0)
    out = []
    for row, ratio in zip(rows, ratios):
        if ratio is None:
            out.append(None)
            continue
        c = min(1.0, max(0.0, ratio / best)) if best > 0 else 0.0
        psnr = row["psnr"]
        f = 1.0 if math.isinf(psnr) else min(1.0, max(0.0, (psnr - PSNR_FLOOR) / (PSNR_LOSSLESS - PSNR_FLOOR)))
        out.append((c, f, 1.0 if row.get("discrete") else 0.0))
    return out


# ----------------------------------------------------------------------------- settings


def settings(data: str, n: int, seed: int, features: str | None, size: int | None, split: str = "test") -> dict:
    """What a report records about how its rows were produced, as asked; ``report_settings`` adds
    what the rows say of their ``protocol`` (images evaluated, feature network, rFID and its floor)."""
    return {"data": str(data), "split": split, "n": n, "seed": seed, "features": features or "none", "image_size": size}


def report_settings(settings: dict | None, rows: Sequence[dict]) -> dict:
    """``settings`` with the rows' ``protocol`` over it (the protocol is what was measured: the
    first row's, as one sweep shares it)."""
    return {**(settings or {}), **(rows[0].get("protocol") or {} if rows else {})}
