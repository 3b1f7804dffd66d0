"""Optional ``torch.compile`` of a sampler's per-step function: a runtime choice of the model
(``Generator.compile_steps``), not a sampling setting, since the tokens drawn are the same either way
(at fp32).

A decode step is small and runs once per token, so on a CPU its cost is as much Python and operator
dispatch as arithmetic; inductor turns the step into a few fused kernels. Compiling takes seconds to
tens of seconds, at the first call and again for a new batch size of 1 vs more (dimensions of size 1
are specialised); ``dynamic=True`` keeps a growing sequence length symbolic, so one graph serves
every step of a request.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.utils._triton import has_triton


@functools.cache
def _compiled(function: Callable) -> Callable:
    return torch.compile(function, dynamic=True)


def call(method: Callable, *args: Any) -> Any:
    """``method(*args)`` (a bound method) through the compiled version of its function, one per
    function: every model of a class shares it. A backend that cannot compile raises one line that
    says what is missing."""
    try:
        return _compiled(method.__func__)(method.__self__, *args)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), "cpu")
        raise RuntimeError(f"torch.compile cannot compile the sampling step here ({_first_line(err)}); "
                           f"{_advice(device)}, or sample without `compile=True`") from None


def unavailable(device: torch.device | str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot compile for ``device`` here, without compiling anything; None
    when it can as far as that shows (a working C++ compiler on a CPU, Triton on a GPU)."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} does not support torch.compile on this Python"
    try:
        if torch.device(device).type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler  # deferred: imports inductor

            get_cpp_compiler()
        elif not has_triton():
            return f"torch.compile needs Triton for {device}; {_advice(device)}"
    except Exception as err:  # inductor's checks raise several types
        return f"torch.compile cannot compile for {device} ({_first_line(err)}); {_advice(device)}"
    return None


def _advice(device: torch.device | str) -> str:
    if torch.device(device).type == "cpu":
        return "on a CPU inductor needs a C++ compiler: install g++ (or point CXX at one)"
    return "on a GPU inductor needs Triton: pip install triton"


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
