"""The logs of a training run: one CSV per stream (``metrics``, ``eval``), rewritten past the
checkpoint on resume so that history matches the weights; a new column (the GAN switching on)
rewrites the file with it."""

from __future__ import annotations

import csv
from pathlib import Path


class RunLog:
    """``metrics.csv`` and ``eval.csv`` of a run (and TensorBoard when installed), main process only."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.files = {name: out / f"{name}.csv" for name in ("metrics", "eval")}
        self.tb = None
        if not enabled:
            return
        for path in self.files.values():  # a resumed run rewrites history past its checkpoint
            if path.exists() and resume_step >= 0:
                rows = list(csv.DictReader(path.open()))
                keep = [r for r in rows if int(r["step"]) <= resume_step]
                if keep:
                    with path.open("w", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=list(keep[0]))
                        w.writeheader()
                        w.writerows(keep)
                else:
                    path.unlink()
        try:  # tensorboard is optional: not a dependency of trilemma
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass

    def log(self, name: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        path = self.files[name]
        row = {"step": step, **values}
        new = not path.exists()
        if not new:
            with path.open() as f:
                header = f.readline().strip().split(",")
            if header != list(row):  # a new column appeared (e.g. the GAN switched on): rewrite
                rows = list(csv.DictReader(path.open()))
                fields = list(dict.fromkeys(header + list(row)))
                with path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=fields, restval="")
                    w.writeheader()
                    w.writerows(rows)
                row = {k: row.get(k, "") for k in fields}
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{name}/{k}", v, step)
