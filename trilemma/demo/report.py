"""The demo's report: ``results.json``, ``report.md`` and a self-contained ``report.html``, every
section filled from the measured results of ``run.py``."""

from __future__ import annotations

import json
from pathlib import Path

from trilemma.demo.plan import EDIT_BOX, EDIT_PROMPT, GENERATORS, PLANS, SAMPLING, DemoPlan
from trilemma.files import atomic_write_bytes
from trilemma.studies.benchmark import protocol_lines
from trilemma.studies.captioning import ATTRIBUTES
from trilemma.studies.html import write_html
from trilemma.studies.report import markdown_table, real_score


def mean_adherence(scores: dict, suffix: str = "") -> float:
    """The mean of the four per-attribute accuracies: the issue's headline adherence number
    (``suffix="_ceiling"``: of their ceilings)."""
    return sum(scores[f"adherence_{a}_acc{suffix}"] for a in ATTRIBUTES) / len(ATTRIBUTES)


def _fmt(v: object, digits: str = ".4g") -> str:
    if isinstance(v, float):
        return format(v, digits)
    return "-" if v is None else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def write_demo_report(out: Path, results: dict, plan: DemoPlan) -> tuple[Path, Path]:
    for scores in results["generation"].values():
        for scored in (scores, *scores.get("categories", {}).values()):
            scored["adherence_mean"] = mean_adherence(scored)
            if "round_trip_shape_acc" in scored:  # read back by the generator's own captions
                scored["round_trip_mean"] = sum(scored[f"round_trip_{a}_acc"] for a in ATTRIBUTES) / len(ATTRIBUTES)
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

    tok = "; ".join(f"{k} {b.describe()}" for k, b in plan.own_budgets.items())
    gen = ", ".join(f"{k} {plan.generator_steps[k]} (batch {plan.generator_batch[k]}, lr {plan.generator_lr[k]:g}"
                    + (f"; {arch(plan.generator_arch[k])}" if plan.generator_arch.get(k) else "") + ")" for k in plan.generators)
    return (f"Shapes 32x32; {plan.pool} training images drawn once and shared. The study's conv families "
            f"({', '.join(plan.study)}) each trained {plan.study_budget.describe()}; the generators' tokenizers and "
            f"the promptable one on their own schedules ({tok}); generators (`*-{plan.generator_preset}` presets) for "
            f"{gen} steps. The study reconstructs "
            f"{plan.study_images} held-out images; generation is evaluated on {plan.eval_images}. Sampling (seed "
            f"{SAMPLING.seed}): {_sampling(plan)}.\n\n![data](data.png)")


def _sampling(plan: DemoPlan) -> str:
    def one(s) -> str:
        return f"temperature {s.temperature:g}, guidance {s.cfg_scale:g}" + (f", {s.steps} steps" if s.steps else "")

    return "; ".join(f"{kind} {one(plan.sampling_for(kind))}" for kind in plan.generators)


def _study(study: dict, plan: DemoPlan) -> list[str]:
    protocol = study.get("protocol", {})
    rfid = str(protocol.get("rfid", "left out"))
    lines = ["## The trilemma study", "",
             "A tokenizer of every family, on the same held-out images: compact (bits per image), lossless (PSNR, "
             "rFID in the shapes probe's features) and discrete (ids from a finite vocabulary). The conv families ("
             + ", ".join(plan.study) + f") share one training budget, {plan.study_budget.describe()}, so the "
             "quantizer is all that differs between them; the generators' tokenizers (vq-gen, ae-gen: longer, vq-gen "
             "at the preset's widths) and the promptable one are marked with their own schedules. The promptable "
             "tokenizer is one row per token budget, drawn as a line. A continuous tokenizer is counted and plotted "
             "at its effective bits (the entropy of its latents quantized at the coarsest step that costs <= 0.1 dB "
             "PSNR); storage bits are its 32-bit floats. "
             + (f"rFID is measured beside its floor, the {protocol.get('rfid_floor')}." if rfid.startswith("measured")
                else f"No rFID in this table: {rfid.removeprefix('left out: ')} (`--full` evaluates "
                     f"{PLANS['full'].study_images}).")
             + " Protocol: " + ", ".join(f"{k} {protocol[k]}" for k in ("split", "images", "seed", "features")
                                         if k in protocol) + ".", "",
             markdown_table(study["rows"]), "",
             "![PSNR vs bits](tradeoff/psnr_vs_bits.png)", "", "![trilemma](tradeoff/trilemma.png)", "",
             "![reconstructions](reconstructions.png)", ""]
    return lines + _region(study["region"]) + [""]


def _region(rows: list[dict]) -> list[str]:
    """The region study's table (``metrics/prompted.py``) and one line on what its controls show."""
    db = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["### Prompted region (promptable tokenizer)", "",
             ("A box on each image's first object (its grid cell), told to neither half of the tokenizer, to the encoder "
              "only, to the decoder only, or to both, at small budgets (PSNR in dB). A decoder told the box was sent it: "
              f"{rows[0]['bits_box']:.0f} bits (corners in steps of 1/256) on top of the tokens' bits. *Unprompted, same "
              "bits*: the tokenizer without the box at both's total bits, interpolated in log bits between the budgets "
              "around it (- past K tokens)."), "",
             ("| k | bits: tokens + box (to the decoder) | in box: neither | encoder only | decoder only | both | "
              "unprompted, same bits | outside: neither | both |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['bits_tokens']:.0f} + {r['bits_box']:.0f} | {db(r['psnr_in_box_neither'])} | "
                     f"{db(r['psnr_in_box_encoder'])} | {db(r['psnr_in_box_decoder'])} | {db(r['psnr_in_box_both'])} | "
                     f"{db(r['psnr_in_box_neither_at_bits_both'])} | {db(r['psnr_outside_neither'])} | "
                     f"{db(r['psnr_outside_both'])} |")
    r = rows[0]
    gain = {c: r[f"psnr_in_box_{c}"] - r["psnr_in_box_neither"] for c in ("encoder", "decoder", "both")}
    fair = r["psnr_in_box_neither_at_bits_both"]
    against = ("no unprompted budget spends as many bits" if fair is None else
               f"{r['psnr_in_box_both'] - fair:+.1f} dB against the unprompted tokenizer given the box's bits as tokens")
    lines += ["", f"Control at k = {r['k']}, in the box: told to the encoder alone the box gains {gain['encoder']:+.1f} dB, "
              f"to the decoder alone {gain['decoder']:+.1f}, to both {gain['both']:+.1f} ({against})."]
    return lines


def _generation(gens: dict, ceiling: dict) -> list[str]:
    """A column per generator and one for real images (the same benchmark for all): the unseen
    prompts' rows (the headline) first, then the novel pairs' and the training prompts'."""
    first = next(iter(gens.values()))
    cats = first.get("categories", {})
    heads = [f"{g} ({GENERATORS[g]})" for g in gens]
    counts = ", ".join(f"{k} {v.get('num_images')}" for k, v in cats.items())
    lines = ["## Generation", "",
             ("One generator of each family, on the tokenizer it suits (in brackets), for the same prompts, of three "
              "kinds (protocol below): prompts whose compositions no training image shows (*unseen*, the headline: "
              "the rows without a prefix), prompts showing a colour x shape pair that no train, val or test image "
              f"shows (*novel*), and training prompts (*train*: the memorisation diagnostic); prompts per kind: {counts} "
              "(the diagnostics at a third of the headline's, to keep the demo's time). Adherence is the shapes "
              "probe's accuracy per attribute on the generated images. *Real images*: the probe on the real images "
              "of the same prompts (its own ceiling: it never trained on a novel pair) and FID's real-vs-real floor "
              "(two disjoint real sets). The tokenizer ceiling is the probe on the tokenizer's reconstructions of "
              "the unseen prompts' real images (what a perfect generator on that tokenizer would score)."), "",
             *protocol_lines(first.get("protocol", {})), "",
             "| metric | " + " | ".join(heads) + " | real images |", "|---|" + "---|" * (len(gens) + 1)]

    def rows(prefix: str, pick, keys: list[tuple[str, str, object]]) -> None:
        """A row per (label, key, format) of the scores ``pick`` finds in each generator's results."""
        for label, key, fmt in keys:
            cells = [fmt(pick(gens[g]).get(key)) for g in gens]
            lines.append(f"| {prefix}{label} | " + " | ".join(cells) + f" | {fmt(real_score(pick(first), key))} |")

    attributes = [(f"adherence {a}", f"adherence_{a}_acc", _pct) for a in ATTRIBUTES]
    mean = [("adherence (mean of the four)", "adherence_mean", _pct), ("objects right", "adherence_object_acc", _pct)]
    trip = [("round trip: its own captions of its images (mean of the four)", "round_trip_mean", _pct)]
    rows("", lambda scores: scores, attributes + mean + trip * any("round_trip_mean" in g for g in gens.values()) + [
        ("images right", "adherence_image_acc", _pct), ("FID (probe features)", "fid", _fmt),
        ("precision", "precision", _fmt), ("recall", "recall", _fmt)])
    for name in [c for c in ("novel", "train") if c in cats]:
        rows(f"{name}: ", lambda scores, name=name: scores["categories"][name], mean + [("FID", "fid", _fmt)])
        for pair in cats[name].get("by_novel_pair", {}):
            rows(f"{name}, {pair}: ", lambda scores, name=name, pair=pair: scores["categories"][name]["by_novel_pair"][pair],
                 [("objects right", "adherence_object_acc", _pct)])

    def ceiling_cell(scores: dict, suffix: str = "") -> str:
        return (" / ".join(f"{100 * scores[f'adherence_{a}_acc{suffix}']:.0f}" for a in ATTRIBUTES)
                + f"% (mean {_pct(mean_adherence(scores, suffix))})")

    real = ceiling_cell(first, "_ceiling") if "adherence_shape_acc_ceiling" in first else "-"
    lines.append("| tokenizer ceiling: shape / colour / size / position | "
                 + " | ".join(ceiling_cell(ceiling[GENERATORS[g]]) for g in gens) + f" | {real} |")
    lines.append("| seconds per image | " + " | ".join(f"{1 / gens[g]['samples_per_s']:.4f}" for g in gens) + " | - |")
    lines.append("")
    lines += _captioning({g: v["captioning"] for g, v in gens.items() if "captioning" in v})
    for g in gens:
        lines += [f"### {g}", "", f"![{g}]({g}_samples.png)", ""]
    return lines


def _captioning(captioning: dict) -> list[str]:
    """Each generator that reads images (trained in both orders) captioning held-out images."""
    if not captioning:
        return []
    first = next(iter(captioning.values()))
    about = first["protocol"]
    lines = ["### Captioning", "",
             (f"The same model reads images: {about['images']} {about['split']} images (compositions no training image "
              f"shows), {about['decoding']} decoding, each caption parsed and its objects matched to the image's by "
              "position. *Round trip* above: the generator's captions of its own generated images, scored against the "
              "prompts (adherence without the probe)."), "",
             "| generator | " + " | ".join(ATTRIBUTES) + " | objects right | captions right | words exact | captions / s |",
             "|---|" + "---|" * (len(ATTRIBUTES) + 4)]
    for g, c in captioning.items():
        lines.append(f"| {g} | " + " | ".join(_pct(c[f"caption_{a}_acc"]) for a in ATTRIBUTES)
                     + f" | {_pct(c['caption_object_acc'])} | {_pct(c['caption_image_acc'])} | "
                     f"{_pct(c['caption_exact'])} | {c['captions_per_s']:.1f} |")
    lines += ["", "Examples: " + "; ".join(f"*{e['caption']}* (true: {e['true']})" for e in first["examples"][:3]), ""]
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
