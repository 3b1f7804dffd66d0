"""The demo's report: ``results.json``, ``report.md`` and a self-contained ``report.html``, every
section filled from the measured results of ``run.py``."""

from __future__ import annotations

import json
from pathlib import Path

from trilemma.demo.plan import EDIT_BOX, EDIT_PROMPT, GENERATORS, SAMPLING, DemoPlan
from trilemma.files import atomic_write_bytes
from trilemma.studies.html import write_html
from trilemma.studies.report import markdown_table

ATTRIBUTES = ("shape", "color", "size", "position")


def mean_adherence(scores: dict) -> float:
    """The mean of the four per-attribute accuracies: the issue's headline adherence number."""
    return sum(scores[f"adherence_{a}_acc"] for a in ATTRIBUTES) / len(ATTRIBUTES)


def _fmt(v: object, digits: str = ".4g") -> str:
    if isinstance(v, float):
        return format(v, digits)
    return "-" if v is None else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def write_demo_report(out: Path, results: dict, plan: DemoPlan) -> tuple[Path, Path]:
    for scores in results["generation"].values():
        scores["adherence_mean"] = mean_adherence(scores)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2, default=float) + "\n").encode())
    report = atomic_write_bytes(out / "report.md", markdown(results, plan).encode())
    return report, write_html(report)


def markdown(results: dict, plan: DemoPlan) -> str:
    lines = [f"# trilemma demo ({plan.name})", "", _settings(plan), ""]
    lines += _study(results["study"], plan)
    lines += _generation(results["generation"], results["study"]["adherence_ceiling"])
    lines += _editing(results["editing"], results["rerank"])
    lines += ["## Time", "", f"Total {results['total_s']:.0f} s, on {results['workers']} worker processes that share the "
              "cores (task times overlap).", "", "| task | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in results["timings_s"].items()]
    return "\n".join(lines) + "\n"


def _settings(plan: DemoPlan) -> str:
    def arch(fields: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in fields.items())

    tok = ", ".join(f"{k} {v} (lr {plan.tokenizer_lr[k]:g})" for k, v in plan.tokenizer_steps.items())
    gen = ", ".join(f"{k} {plan.generator_steps[k]} (batch {plan.generator_batch[k]}, lr {plan.generator_lr[k]:g}"
                    + (f"; {arch(plan.generator_arch[k])}" if plan.generator_arch.get(k) else "") + ")" for k in GENERATORS)
    return (f"Shapes 32x32; {plan.pool} training images drawn once and shared. Tokenizers (batch 32; vq at its preset's "
            f"widths, the other conv tokenizers with {arch(plan.conv_tokenizer) or 'the preset widths'}) trained for {tok} "
            f"steps; generators (`*-{plan.generator_preset}` presets) for {gen} steps. The study reconstructs "
            f"{plan.study_images} held-out images; generation is evaluated on {plan.eval_images}. Sampling (seed "
            f"{SAMPLING.seed}): {_sampling(plan)}.\n\n![data](data.png)")


def _sampling(plan: DemoPlan) -> str:
    def one(s) -> str:
        return f"temperature {s.temperature:g}, guidance {s.cfg_scale:g}" + (f", {s.steps} steps" if s.steps else "")

    return "; ".join(f"{kind} {one(plan.sampling_for(kind))}" for kind in GENERATORS)


def _study(study: dict, plan: DemoPlan) -> list[str]:
    lines = ["## The trilemma study", "",
             "A tokenizer of every family, on the same held-out images: compact (bits per image), lossless (PSNR, "
             "rFID in the shapes probe's features) and discrete (ids from a finite vocabulary). The promptable "
             "tokenizer is one row per token budget, drawn as a line. Continuous latents have no bit count and "
             "are plotted at float32 storage. Training steps: "
             + ", ".join(f"{k} {v}" for k, v in plan.tokenizer_steps.items())
             + " (batch 32): the generators' VQ and AE get the most, so at short schedules a point says as much "
             "about its training time as about its family (`--full` trains each of them 3-13x longer).", "",
             markdown_table(study["rows"]), "",
             "![PSNR vs bits](tradeoff/psnr_vs_bits.png)", "", "![trilemma](tradeoff/trilemma.png)", "",
             "![reconstructions](reconstructions.png)", ""]
    lines += ["### Prompted region (promptable tokenizer)", "",
              "A box on each image's first object, given as a prompt or not, at small budgets (dB):", "",
              "| k | bits | PSNR in box | in box, prompted | gain | outside | outside, prompted |",
              "|---|---|---|---|---|---|---|"]
    for r in study["region"]:
        gain = r["psnr_in_box_prompted"] - r["psnr_in_box"]
        lines.append(f"| {r['k']} | {r['bits']:.0f} | {r['psnr_in_box']:.2f} | {r['psnr_in_box_prompted']:.2f} | "
                     f"{gain:+.2f} | {r['psnr_outside']:.2f} | {r['psnr_outside_prompted']:.2f} |")
    return lines + [""]


def _generation(gens: dict, ceiling: dict) -> list[str]:
    heads = [f"{g} ({GENERATORS[g]})" for g in gens]
    lines = ["## Generation", "", "One generator of each family, on the tokenizer it suits (in brackets), for the "
             "same prompts. Adherence is the shapes probe's accuracy per attribute on the generated images; the "
             "ceiling is the probe on the tokenizer's reconstructions of the real images (what a perfect generator "
             "on that tokenizer would score); `*_floor` is the score between two disjoint sets of real images.", "",
             "| metric | " + " | ".join(heads) + " |", "|---|" + "---|" * len(gens)]
    rows = [(f"adherence {a}", f"adherence_{a}_acc", _pct) for a in ATTRIBUTES]
    rows += [("adherence (mean of the four)", "adherence_mean", _pct), ("objects right", "adherence_object_acc", _pct),
             ("images right", "adherence_image_acc", _pct), ("FID (probe features)", "fid", _fmt),
             ("FID floor (real vs real)", "fid_floor", _fmt), ("precision", "precision", _fmt), ("recall", "recall", _fmt)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(gens[g].get(key)) for g in gens) + " |")
    def ceiling_cell(scores: dict) -> str:
        return " / ".join(f"{100 * scores[f'adherence_{a}_acc']:.0f}" for a in ATTRIBUTES) + f"% (mean {_pct(mean_adherence(scores))})"

    lines.append("| ceiling: shape / colour / size / position | " + " | ".join(ceiling_cell(ceiling[GENERATORS[g]]) for g in gens) + " |")
    lines.append("| seconds per image | " + " | ".join(f"{1 / gens[g]['samples_per_s']:.4f}" for g in gens) + " |")
    lines.append("")
    for g in gens:
        lines += [f"### {g}", "", f"![{g}]({g}_samples.png)", ""]
    return lines


def _editing(editing: dict, rr: dict) -> list[str]:
    lines = ["## Editing", "", f"`trilemma generate \"{EDIT_PROMPT}\" --init IMAGE --box " + ",".join(f"{v:g}" for v in EDIT_BOX)
             + "`: the token cells under the box are drawn anew, every other token is kept (diffusion draws "
             "continuous latents and has no ids to keep). PSNR against the image's own reconstruction (dB; outside "
             "the box an edit should change nothing, so only what the decoder spreads across the box edge counts):",
             "", "| generator | PSNR outside the box | PSNR inside |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['psnr_outside'])} | {_fmt(v['psnr_inside'])} |" for k, v in editing.items()]
    lines += ["", "![editing](editing.png)", ""]
    lines += ["## Reranking", "", f"DALL-E, {rr['n']} benchmark prompts at the same seed: one image each, and the best of "
              f"{rr['candidates']} by the contrastive text-image score (`--rerank {rr['candidates']}`).", "",
              f"| adherence | one sample | best of {rr['candidates']} |", "|---|---|---|"]
    lines += [f"| {k} | {_pct(rr['plain'][k])} | {_pct(rr['reranked'][k])} |" for k in rr["plain"]]
    lines += [f"| contrastive score | {_fmt(rr['score_plain'])} | {_fmt(rr['score_reranked'])} |", ""]
    return lines
