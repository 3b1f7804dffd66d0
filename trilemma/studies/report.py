"""Trade-off reports: ``report.json``, ``report.md`` (one table) and PNG plots, written atomically.

Plots (matplotlib, Agg canvas, no pyplot state):
- ``psnr_vs_bits.png`` / ``rfid_vs_bits.png``: one marker per tokenizer on a log x axis of bits per
  image; filled = discrete, hollow = continuous. A continuous tokenizer has no code: it is placed at
  its effective bits (``metrics.bits``), or, where no quantization step kept its PSNR, at its float32
  storage, and its label says which. The Pareto front (``tradeoff.pareto_front``) is drawn over
  discrete tokenizers only, as a step line (best score reachable within a budget).
  A lossless reconstruction (PSNR = inf) is a triangle on an extra "∞" line above the dB scale.
- ``trilemma.png``: the trilemma triangle, corners compact / lossless / discrete (see
  ``tradeoff.trilemma_weights`` for the formula).

JSON cannot hold ``inf``/``nan``: they are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon
from matplotlib.ticker import FuncFormatter, LogLocator

from trilemma.files import atomic_write_bytes
from trilemma.studies.captioning import ATTRIBUTES
from trilemma.studies.html import write_html
from trilemma.studies.tradeoff import (
    FLOAT_BITS,
    PSNR_FLOOR,
    PSNR_LOSSLESS,
    discrete_front,
    pareto_front,
    plot_bits,
    raw_bits,
    report_settings,
    stored_at_float32,
    trilemma_weights,
)

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]

def jsonable(obj: Any) -> Any:
    """Plain JSON values: non-finite floats become strings, paths strings, tensors numbers/lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # tensors and numpy values
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


# ----------------------------------------------------------------------------- table


def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def bits_cell(row: dict) -> str:
    """Bits per image: a discrete tokenizer's code, a continuous one's effective bits (marked)."""
    if row.get("discrete"):
        return _num(row.get("bits_per_image"), ",.0f")
    floats, effective = row.get("floats_per_image"), row.get("effective_bits_per_image")
    kind = "continuous" if effective is None else f"{effective:,.0f} effective"
    return f"{kind} ({floats:,.0f} floats)" if floats is not None else kind


def _floor_of(rows: Sequence[dict], key: str) -> float | None:
    """The one real-vs-real floor the rows share (the same real images), or None."""
    floors = {r.get(key) for r in rows} - {None}
    return floors.pop() if len(floors) == 1 else None


def psnr_cell(v: Any) -> str:
    return "—" if v is None else "∞ (lossless)" if math.isinf(v) else f"{v:.2f}"


def markdown_table(rows: Sequence[dict], front: Sequence[int] = ()) -> str:
    """One Markdown table, a row per tokenizer (``f``: its downsampling factor on a grid); ``front``
    indices get a ``*`` after the name. A ``storage bits`` column (32 x floats) when a row is
    continuous, the rFID floor in its header when the rows share one, and a ``trained`` column when
    rows say how they were trained."""
    show_lpips = any(r.get("lpips") is not None for r in rows)
    show_storage = any(not r.get("discrete") for r in rows)
    show_trained = any(r.get("trained") for r in rows)
    floor = _floor_of(rows, "rfid_floor")
    head = ["tokenizer"] + (["trained"] if show_trained else []) + ["discrete", "tokens", "f", "bits/image"]
    head += (["storage bits"] if show_storage else []) + ["PSNR (dB)", "SSIM"] + (["LPIPS"] if show_lpips else [])
    head += ["rFID" if floor is None else f"rFID (floor {floor:.2f})", "usage", "encode img/s", "decode img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, r in enumerate(rows):
        tokens = r.get("tokens_per_image")
        cells = [r["tokenizer"] + (" *" if i in front else "")] + ([r.get("trained") or "—"] if show_trained else [])
        cells += ["yes" if r.get("discrete") else "no",
                  "—" if tokens is None else (f"{tokens:g}" if float(tokens).is_integer() else f"{tokens:.1f}"),
                  "—" if r.get("downsampling") is None else f"{r['downsampling']}", bits_cell(r)]
        cells += [_num(r.get("storage_bits_per_image"), ",.0f")] if show_storage else []
        cells += [psnr_cell(r.get("psnr")), _num(r.get("ssim"), ".4f")]
        cells += [_num(r.get("lpips"), ".4f")] if show_lpips else []
        usage = r.get("codebook_usage")
        cells += [
            _num(r.get("rfid"), ".2f"),
            f"{100 * usage:.1f}%" if usage is not None and r.get("discrete") else "—",
            _num(r.get("encode_images_per_s"), ",.0f"),
            _num(r.get("decode_images_per_s"), ",.0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def _figure(width: float = 7.5, height: float = 5.0):
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3) for dx, dy in ((8, 6), (8, -6), (-8, 6), (-8, -6), (0, 10), (0, -10))]


def _place_labels(ax, labels: list[tuple[str, tuple[float, float], str]], fontsize: float = 8,
                  avoid: Sequence = ()) -> None:
    """Annotate points greedily: each label takes the first nearby offset whose box overlaps no
    label, marker or ``avoid`` artist placed before it (or the one overlapping least). Call after
    the limits are set."""
    renderer = ax.figure.canvas.get_renderer()
    taken = [tuple(a.get_window_extent(renderer).extents) for a in avoid]
    for _, (x, y), _ in labels:  # the markers themselves (~20 px across at 150 dpi)
        px, py = ax.transData.transform((x, y))
        taken.append((px - 11, py - 11, px + 11, py + 11))
    frame = ax.get_window_extent(renderer)

    def overlap(a, b):
        return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))

    for text, xy, color in labels:
        best = None
        for dx, dy in _OFFSETS:
            ann = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color=color,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center",
                              va="bottom" if dy > 0 else "top", zorder=4)
            e = ann.get_window_extent(renderer)
            box = (e.x0, e.y0, e.x1, e.y1)
            outside = (e.width * e.height) - overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
            cost = sum(overlap(box, t) for t in taken) + outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _colors(rows: Sequence[dict]) -> list[str]:
    """A colour per row: one per tokenizer, a promptable tokenizer's budgets (one ``curve``) sharing theirs."""
    keys = [r.get("curve") or i for i, r in enumerate(rows)]
    ordinal = {k: j for j, k in enumerate(dict.fromkeys(keys))}
    return [COLORS[ordinal[k] % len(COLORS)] for k in keys]


def _marker_style(row: dict, color: str) -> dict:
    if row.get("discrete"):
        return dict(facecolor=color, edgecolor=color)
    return dict(facecolor="white", edgecolor=color, linewidths=2)


def plot_metric_vs_bits(rows: Sequence[dict], metric: str, path: str | Path, title: str = "") -> Path | None:
    """PSNR (``metric="psnr"``, higher is better) or rFID (lower) against bits per image; None
    (and no file) when no row has both numbers."""
    higher = metric == "psnr"
    pts = [(i, plot_bits(r), r.get(metric)) for i, r in enumerate(rows)]
    pts = [(i, x, y) for i, x, y in pts if x is not None and y is not None and not math.isnan(y) and x > 0]
    if not pts:
        return None
    finite = [y for _, _, y in pts if math.isfinite(y)]
    lo, hi = (min(finite), max(finite)) if finite else (PSNR_LOSSLESS - 10, PSNR_LOSSLESS)
    span = max(hi - lo, 2.0)
    cap = hi + 0.2 * span  # where an infinite PSNR is drawn
    ys = {i: (cap if math.isinf(y) else y) for i, _, y in pts}

    fig = _figure()
    ax = fig.add_subplot()
    xs = [x for _, x, _ in pts]
    raw = {raw_bits(r) for r in rows if raw_bits(r)}
    x_lo, x_hi = min(xs + list(raw)) / 2, max(xs + list(raw)) * 2
    ax.set_xscale("log", base=2)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(lo - 0.12 * span, (cap if any(math.isinf(y) for _, _, y in pts) else hi) + 0.12 * span)

    discrete = [(i, x, rows[i][metric]) for i, x, _ in pts if rows[i].get("discrete")]
    front = [discrete[k] for k in pareto_front([(x, y) for _, x, y in discrete], maximize=higher)]
    if front:
        fx, fy = [x for _, x, _ in front], [ys[i] for i, _, _ in front]
        ax.step(fx + [x_hi], fy + [fy[-1]], where="post", color="0.45", linestyle="--", linewidth=1.2, zorder=1)
    lossless = any(math.isinf(y) for _, _, y in pts)
    if lossless:  # an extra y tick "∞" on a line of its own, above the finite scale
        ax.axhline(cap, color="0.8", linewidth=0.8, zorder=0)
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t < cap - 0.08 * span]
        ax.set_yticks(ticks + [cap], [f"{t:g}" for t in ticks] + ["∞"])
    if len(raw) == 1:
        (rb,) = raw
        ax.axvline(rb, color="0.7", linestyle=":", linewidth=1, zorder=0)
        ax.text(rb, 0.02 if higher else 0.98, " raw 8-bit image " if higher else "raw 8-bit image ",
                transform=ax.get_xaxis_transform(), fontsize=7, color="0.45", rotation=90,
                va="bottom" if higher else "top", ha="right")

    # A promptable tokenizer is one curve across its budgets: one colour, a line, one label.
    colors = _colors(rows)
    curves: dict[str, list[tuple[float, float, int]]] = {}
    for i, x, _ in pts:
        if rows[i].get("curve"):
            curves.setdefault(rows[i]["curve"], []).append((x, ys[i], i))
    for line in curves.values():
        line.sort()
        ax.plot([x for x, _, _ in line], [y for _, y, _ in line], color=colors[line[0][2]], linewidth=1.5, zorder=2)
    labels = []
    for i, x, y in pts:
        row, color = rows[i], colors[i]
        ax.scatter([x], [ys[i]], s=40 if row.get("curve") else 80, marker="^" if math.isinf(y) else "o", zorder=3,
                   **_marker_style(row, color))
        if row.get("curve"):
            if row["budget"] == max(r["budget"] for r in rows if r.get("curve") == row["curve"]):
                labels.append((f"{row['curve']}\n(budgets {', '.join(str(r['budget']) for r in rows if r.get('curve') == row['curve'])})",
                               (x, ys[i]), color))
            continue
        text = row["tokenizer"]
        if stored_at_float32(row):
            text += f"\n({row.get('floats_per_image') or 0:,.0f} floats x {FLOAT_BITS} bit: stored, no step kept PSNR)"
        elif not row.get("discrete"):
            text += f"\n(effective bits; {row.get('floats_per_image') or 0:,.0f} floats)"
        labels.append((text, (x, ys[i]), color))

    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=20))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$2^{{{round(math.log2(v))}}}$" if v > 0 else ""))
    ax.set_xlabel("bits per image (log scale; left = more compact)")
    ax.set_ylabel("PSNR (dB; higher = more faithful)" if higher else "rFID (lower = more faithful)")
    ax.set_title(title or ("PSNR" if higher else "rFID") + " vs bits per image", fontsize=11)
    ax.grid(True, which="major", color="0.93", zorder=0)
    handles = [
        Line2D([], [], marker="o", linestyle="", color="0.3", markersize=8, label="discrete: ids x log2(vocab) bits"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="0.3", markeredgewidth=2,
               markersize=8, label="continuous: effective bits, the entropy of its\nlatents quantized within 0.1 dB PSNR"),
    ]
    if lossless:
        handles.append(Line2D([], [], marker="^", linestyle="", color="0.3", markersize=8,
                              label="lossless: PSNR = ∞, drawn on the ∞ line"))
    if front:
        handles.append(Line2D([], [], color="0.45", linestyle="--", label="Pareto front (discrete tokenizers)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left" if higher else "lower left", framealpha=0.95)
    _place_labels(ax, labels)
    return _save(fig, Path(path))


def plot_triangle(rows: Sequence[dict], path: str | Path, title: str = "") -> Path | None:
    """Each tokenizer at the barycentric position of ``trilemma_weights`` in the triangle, with
    its (c, f, d) listed beside the triangle."""
    h = math.sqrt(3) / 2
    corners = {"compact": (0.5, h), "lossless": (0.0, 0.0), "discrete": (1.0, 0.0)}
    placed = [(i, w) for i, w in enumerate(trilemma_weights(rows)) if w is not None]
    if not placed:
        return None
    fig = _figure(9.0, 5.6)
    ax = fig.add_axes((0.02, 0.1, 0.6, 0.82))
    ax.add_patch(Polygon(list(corners.values()), closed=True, facecolor="#f7f7f7", edgecolor="0.3", linewidth=1.2))
    for name, dy, va in (("compact", 0.03, "bottom"), ("lossless", -0.03, "top"), ("discrete", -0.03, "top")):
        x, y = corners[name]
        ax.text(x, y + dy, name, ha="center", va=va, fontsize=11, weight="bold")
    # What each edge means: two of the properties, the third given up.
    edge_labels = []
    for (a, b), text in ((("compact", "lossless"), "continuous latents"), (("lossless", "discrete"), "raw pixel ids"),
                         (("compact", "discrete"), "lossy codebooks")):
        (xa, ya), (xb, yb) = corners[a], corners[b]
        mx, my = (xa + xb) / 2, (ya + yb) / 2
        nx, ny = mx - 0.5, my - h / 3  # outward, away from the centroid
        norm = math.hypot(nx, ny)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        angle = angle - 180 if angle > 90 else angle + 180 if angle < -90 else angle
        edge_labels.append(ax.text(mx + 0.08 * nx / norm, my + 0.08 * ny / norm, text, ha="center", va="center",
                                   rotation=angle, fontsize=8, color="0.5", style="italic"))
    ax.set_xlim(-0.12, 1.12)
    ax.set_ylim(-0.12, h + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")

    labels, colors = [], _colors(rows)
    for i, (c, f, d) in placed:
        total = c + f + d
        w = (c / total, f / total, d / total) if total > 0 else (1 / 3,) * 3
        x = sum(wk * corners[k][0] for wk, k in zip(w, ("compact", "lossless", "discrete")))
        y = sum(wk * corners[k][1] for wk, k in zip(w, ("compact", "lossless", "discrete")))
        row, color = rows[i], colors[i]
        ax.scatter([x], [y], s=80, zorder=3, **_marker_style(row, color))
        labels.append((row["tokenizer"], (x, y), color))
    _place_labels(ax, labels, fontsize=7.5, avoid=edge_labels)

    side = fig.add_axes((0.64, 0.1, 0.35, 0.82))
    side.axis("off")
    side.text(0, 1, "c = compactness, f = fidelity, d = discreteness", fontsize=8, va="top", color="0.3")
    step = min(0.055, 0.6 / len(placed))  # the table ends above the formulas however many rows it has
    size = 8 if step > 0.05 else 7
    side.text(0, 0.92, f"{'tokenizer':<22} {'c':>4}  {'f':>4}  d", fontsize=size, va="top", family="monospace")
    for k, (i, (c, f, d)) in enumerate(placed, start=1):
        side.text(0, 0.92 - step * k, f"{rows[i]['tokenizer'][:22]:<22} {c:.2f}  {f:.2f}  {d:.0f}", fontsize=size,
                  va="top", family="monospace", color=colors[i])
    side.text(0, 0.0, "position = (c, f, d) / (c + f + d)\n"
              "c = log2(raw/bits) / log2(raw/fewest bits in sweep)\n"
              f"f = (PSNR - {PSNR_FLOOR:g} dB) / {PSNR_LOSSLESS - PSNR_FLOOR:g} dB, clipped; ∞ = 1\n"
              "d = 1 if discrete, else 0\n"
              "filled = discrete; hollow = continuous\n(counted at its effective bits)",
              fontsize=7.5, va="bottom", color="0.35")
    fig.suptitle(title or "The trilemma: compact / lossless / discrete", fontsize=11)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- the report


def write_report(rows: Sequence[dict], out_dir: str | Path, settings: dict | None = None,
                 title: str = "Tokenizer trade-off", pictures: str | Path | None = None) -> dict[str, Path]:
    """Write report.json, report.md, report.html (self-contained) and the PNG plots into ``out_dir``;
    returns {name: path}. ``pictures``: a PNG in ``out_dir`` shown after the table (the tokenizers'
    reconstructions, ``tradeoff.reconstruction_picture``)."""
    out = Path(out_dir)
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("nothing to report: no rows")
    front_psnr, front_rfid = discrete_front(rows, "psnr"), discrete_front(rows, "rfid")
    settings = report_settings(settings, rows)
    subtitle = ""
    if settings:
        subtitle = f" ({settings.get('data', '?')}, {settings.get('images', settings.get('n', '?'))} test images)"
    files: dict[str, Path] = {}
    plots = {
        "psnr_plot": plot_metric_vs_bits(rows, "psnr", out / "psnr_vs_bits.png", "PSNR vs bits per image" + subtitle),
        "rfid_plot": plot_metric_vs_bits(rows, "rfid", out / "rfid_vs_bits.png", "rFID vs bits per image" + subtitle),
        "triangle_plot": plot_triangle(rows, out / "trilemma.png"),
    }
    files.update({k: v for k, v in plots.items() if v is not None})
    if pictures is not None:
        files["reconstructions"] = Path(pictures)

    notes = [
        "\\* = on the Pareto front of bits per image vs PSNR (discrete tokenizers: fewer bits, higher PSNR).",
        "Bits per image = ids per image x log2(vocabulary); a continuous tokenizer has no code, so it is counted "
        "(and plotted) at its effective bits: the entropy of its latents quantized at the coarsest step costing "
        f"<= 0.1 dB PSNR. Storage bits = {FLOAT_BITS} x floats, what float32 latents take as stored.",
    ]
    floor, why = _floor_of(rows, "rfid_floor"), str(settings.get("rfid", ""))
    if floor is not None:
        notes.append(f"rFID floor (real vs real) {floor:.2f}: the FID between the evaluated images and as many other "
                     "real ones; an rFID near it moves the feature statistics about as much as drawing other images.")
    if "rfid_plot" not in files:
        reason = why.removeprefix("left out: ") if why.startswith("left out") else "no feature network"
        notes.append(f"rFID: not computed ({reason}), so there is no rFID plot.")
    md = [f"# {title}", ""]
    if settings:
        md += ["Protocol:", ""] + [f"- {k}: {v}" for k, v in settings.items()] + [""]
    md += [markdown_table(rows, front_psnr), ""] + [f"- {n}" for n in notes] + [""]
    for key, caption in (("reconstructions", "reconstructions"), ("psnr_plot", "PSNR vs bits"),
                         ("rfid_plot", "rFID vs bits"), ("triangle_plot", "trilemma")):
        if key in files:
            md += [f"![{caption}]({files[key].name})", ""]
    files["markdown"] = atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    files["html"] = write_html(files["markdown"])
    names = [r["tokenizer"] for r in rows]
    payload = {
        "title": title,
        "settings": settings or {},
        "rows": rows,
        "pareto_front": {"psnr": [names[i] for i in front_psnr], "rfid": [names[i] for i in front_rfid]},
        "trilemma_weights": {names[i]: dict(zip(("compactness", "fidelity", "discreteness"), w))
                             for i, w in enumerate(trilemma_weights(rows)) if w is not None},
        "notes": notes,
        "files": {k: v.name for k, v in files.items()},
    }
    files["json"] = out / "report.json"
    payload["files"]["json"] = "report.json"
    write_json(payload, files["json"])
    return files


def real_score(scores: dict, key: str) -> float | None:
    """What real images score on ``key``: the adherence scorer's ceiling ``KEY_ceiling`` (for
    ``adherence_mean`` the mean of the four attributes' ceilings), else the real-vs-real floor
    ``KEY_floor`` (KID's mean has ``kid_floor``), else None."""
    if key == "adherence_mean":
        ceilings = [scores.get(f"adherence_{a}_acc_ceiling") for a in ATTRIBUTES]
        return None if None in ceilings else sum(ceilings) / len(ceilings)
    if f"{key}_ceiling" in scores:
        return scores[f"{key}_ceiling"]
    return scores.get("kid_floor" if key == "kid_mean" else f"{key}_floor")
