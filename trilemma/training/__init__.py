"""Training: one loop (``loop.py``, on Hugging Face accelerate) and the two tasks it runs,
``tokenizer.py`` and ``generator.py``. ``schedule.py`` holds the learning-rate schedule that every
optimisation in trilemma uses (the evaluation's probe and contrastive model too).

Import the submodules directly; this package imports nothing, so that ``schedule`` stays light.
"""
