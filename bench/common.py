"""Shared bench helpers: timing, a printed table, and JSON results with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).parent / "results"


def best_time(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls after ``warmup`` calls (the least disturbed run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def best_times(fns: dict[str, Callable[[], Any]], repeat: int = 3) -> dict[str, float]:
    """Best wall time of each of ``fns`` (already warm) over ``repeat`` rounds, each round calling
    every one once, in alternating order: variants compared under the same background load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat):
        for name, fn in list(fns.items())[:: -1 if r % 2 else 1]:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "load_avg_1m": os.getloadavg()[0],
    }


def report(name: str, rows: list[dict[str, Any]], columns: list[str], extra: dict[str, Any] | None = None) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bench": name, "machine": machine(), "rows": rows, **(extra or {})}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


GENERATION_COLUMNS = ["shape_acc", "color_acc", "size_acc", "position_acc", "fid", "fid_floor", "s_per_image"]


def generation_row(out: dict[str, Any]) -> dict[str, Any]:
    """The columns a generation benchmark reports (``GENERATION_COLUMNS``) from ``evaluate_generation``'s
    scores: adherence per attribute, FID beside its floor, seconds per image."""
    row = {k: out[f"adherence_{k}"] for k in GENERATION_COLUMNS[:4]}
    return {**row, "fid": out["fid"], "fid_floor": out["fid_floor"], "s_per_image": 1 / out["samples_per_s"]}
