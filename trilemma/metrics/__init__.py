"""Scoring, pure and below training: metric functions (``scores``), feature networks
(``features``), reconstruction and prompted-region scoring, and the scorer models (the shapes
probe, the contrastive text-image model). Importing the package registers its feature networks."""

from trilemma.metrics import contrastive, features, probe  # noqa: F401  (registers the "features" kind)
