"""The main job end to end on the embedded shapes data (``trilemma demo``, ``make demo``):
``plan.py`` says what is trained and for how long, ``run.py`` runs the stages, ``report.py``
writes the report."""

from trilemma.demo.run import run_demo

__all__ = ["run_demo"]
