"""Evaluation: pure metric functions (metrics.py) and pluggable feature networks (features.py)."""
