"""The main job, end to end on the embedded shapes dataset: a tokenizer of every family placed on
one trade-off table (the trilemma study), one generator of each family trained on the tokenizer it
suits and evaluated on the same prompts, an editing example, a rerank study, and ``report.md`` /
``report.html`` with every table and picture. The work is a graph of tasks (``tasks.py``) run on
worker processes (``schedule.py``); each prints its time as it ends."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trilemma.demo import tasks
from trilemma.demo.plan import GENERATOR_TOKENIZERS, GENERATORS, PLANS, PROMPTABLE_BASE, DemoPlan
from trilemma.demo.report import write_demo_report
from trilemma.demo.schedule import Task, run_tasks


def graph(out: Path, plan: DemoPlan) -> list[Task]:
    """Every task and what it waits for, in priority order (a free worker takes the first whose
    ``after`` are done): the token generators' tokenizer first (the longest chain: vq-gen, then three
    generators, then editing), the generators' AE, the probe, the study's small tokenizers and the rerank
    scorer beside it; then what trains on the AE alone (its generators, the promptable tokenizer), which
    is ready long before the vq-gen, so the other worker is busy while the vq-gen trains; then the
    vq-gen's generators, longest first, so that no worker idles at the end (docs/experiments.md, "Task order")."""
    def tokenizer(name: str) -> Task:
        return Task(name, tasks.tokenizer, (out, plan, name), (PROMPTABLE_BASE,) if name == "promptable" else ())

    def generator(kind: str) -> Task:
        return Task(kind, tasks.generator, (out, plan, kind), (GENERATORS[kind], "probe"))

    names = plan.tokenizers()
    own = [n for n in names if n in GENERATOR_TOKENIZERS]  # vq-gen first: the longest chain
    study = [n for n in names if n not in GENERATOR_TOKENIZERS and n != "promptable"]
    # the longest training first (images seen as its measure): it must not be the one left at the end
    generator_order = sorted(plan.generators, key=lambda g: -plan.generator_steps[g] * plan.generator_batch[g])
    on_ae = [generator(g) for g in generator_order if GENERATORS[g] == "ae-gen"] + [tokenizer("promptable")]
    return ([tokenizer(n) for n in own] + [Task("probe", tasks.probe, (out, plan))]
            + [tokenizer(n) for n in study] + [Task("contrastive", tasks.contrastive, (out, plan))]
            + on_ae + [generator(g) for g in generator_order if GENERATORS[g] != "ae-gen"]
            + [Task("study", tasks.study, (out, plan), (*names, "probe")),
               Task("rerank", tasks.rerank, (out, plan), ("dalle", "contrastive")),
               Task("editing", tasks.editing, (out, plan), plan.generators)])


def run_demo(out: Path, plan: str | DemoPlan = "standard", workers: int | None = None) -> Path:
    """Run the demo into ``out`` and return report.md. Rerun into the same ``out``, finished
    trainings are kept and interrupted ones resume from their last checkpoint. ``workers``: worker
    processes (default 2, or 1 on a one-core machine), which share the cores' threads."""
    plan = PLANS[plan] if isinstance(plan, str) else plan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    workers = workers or min(2, cores)
    threads = max(1, cores // workers)
    print(f"[demo] {plan.name}: {len(plan.tokenizers())} tokenizers ({', '.join(plan.tokenizers())}), "
          f"{len(plan.generators)} generators ({', '.join(f'{g} on {GENERATORS[g]}' for g in plan.generators)}), probe, trilemma study, editing, reranking; "
          f"{workers} worker processes of {threads} thread{'s' * (threads > 1)}; each task's output in {out / 'logs'}", flush=True)
    t0 = time.perf_counter()
    results, seconds = run_tasks(graph(out, plan), out / "logs", workers=workers, threads=threads,
                                 say=lambda line: print(line, flush=True))
    summary = {"plan": plan.name, "study": results["study"], "generation": {g: results[g] for g in plan.generators},
               "editing": results["editing"], "rerank": results["rerank"], "workers": workers,
               "timings_s": seconds, "total_s": time.perf_counter() - t0}
    report, page = write_demo_report(out, summary, plan)
    print(f"[demo] finished in {summary['total_s']:.0f} s; report: {report} and {page}")
    return report
