"""The main job end to end on the embedded shapes data (``trilemma demo``, ``make demo``):
``plan.py`` says what is trained and for how long, ``tasks.py`` holds each piece of work,
``schedule.py`` runs them on worker processes, ``run.py`` ties the graph together and ``report.py``
writes the report."""

from trilemma.demo.run import run_demo

__all__ = ["run_demo"]
