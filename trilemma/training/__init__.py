"""Training: one loop (``loop.py``, on Hugging Face accelerate) and the Tasks it runs:
``tokenizer.py``, ``generator.py``, ``decoder.py`` and ``scorers.py`` (the evaluation's probe and
contrastive model). ``schedule.py`` is the learning-rate schedule, ``logs.py`` a run's CSV logs,
``rng.py`` the random state (per-rank streams, saved for exact resume), ``stopping.py`` the stop on
a non-finite loss that every rank makes together."""
