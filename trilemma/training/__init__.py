"""Training: one loop (``loop.py``, on Hugging Face accelerate) and the Tasks it runs:
``tokenizer.py``, ``generator.py``, ``decoder.py`` and ``scorers.py`` (the evaluation's probe and
contrastive model). ``schedule.py`` is the learning-rate schedule, ``logs.py`` a run's CSV logs."""
