"""What every generator shares: its construction from a ``TokenSpec`` and a text tokenizer, the
checkpoint context that records both, the compatibility check against a tokenizer, and the parts of
classifier-free guidance that do not depend on the family: caption dropout in training, the
conditional and empty-prompt rows stacked in one batch at sampling time, and their combination; and
the checks every sampler shares, once (``start_sampling``), refusing what a family declares it
cannot take (``takes_budget``, ``edits``).

    gen = build("generator", name, spec=tok.spec, text=text_tokenizer, **cfg)
    gen.fit(tokens)                                     (before training: e.g. a latent scale)
    gen.loss(tokens, text_ids) -> dict[str, Tensor]     ("loss" is what is optimised)
    gen.sample(text_ids, sampling: SamplingConfig, known=None) -> Tokens
                                                        (known: flat ids to keep, -1 to draw; editing)
    gen.compile_steps()                                 (sample through torch.compile'd steps)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trilemma import registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig, cfg_combine, drop_condition, make_generator
from trilemma.nn import compiled
from trilemma.tokens import Tokens, TokenSpec


class Generator(nn.Module):
    config: Any  # a dataclass with at least ``cond_drop_prob``
    accepts = ("discrete",)  # TokenSpec kinds this generator can model
    # What its sampler takes besides the common options (``start_sampling`` refuses the rest):
    takes_budget = False  # sampling.budget: stop after the first tokens
    edits = False  # known: keep the given ids, draw the others
    compiles = False  # compile_steps: its sampler's per-step function through torch.compile
    compiled_steps = False  # set by compile_steps: a runtime choice, not saved with the model

    def __init__(self, spec: TokenSpec, text: TextTokenizer):
        super().__init__()
        self.check_spec(spec)
        self.spec, self.text = spec, text
        self.image_len = spec.max_tokens * spec.levels  # flat ids per image (position-major)

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> None:
        """Refuse, with advice, tokens this generator cannot model (before any work is spent)."""
        if spec.kind not in cls.accepts:
            raise ValueError(
                f"{cls.registry_name} models {' or '.join(cls.accepts)} tokens, but this tokenizer makes "
                f"{spec.kind} tokens; pick a {' or '.join(cls.accepts)} tokenizer (e.g. "
                + ("vq-f4-shapes)" if "discrete" in cls.accepts else "ae-f4-shapes)")
            )

    def checkpoint_context(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "text": self.text.to_dict()}

    @classmethod
    def context_from_checkpoint(cls, context: dict[str, Any], directory: Path) -> dict[str, Any]:
        return {"spec": TokenSpec.from_dict(context["spec"]), "text": TextTokenizer.from_dict(context["text"])}

    def null_text(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The empty prompt: the unconditional input used by classifier-free guidance."""
        return self.text.encode([""] * batch).to(device)

    def flat_ids(self, tokens: Tokens) -> torch.Tensor:
        """[B, N] or [B, N, levels] ids -> [B, N * levels], position-major."""
        ids = tokens.ids
        if ids is None:
            raise ValueError(f"{self.registry_name} needs token ids; these tokens carry only latents")
        return ids.reshape(ids.shape[0], -1)

    def unflatten(self, flat: torch.Tensor) -> Tokens:
        if self.spec.levels > 1:
            flat = flat.reshape(flat.shape[0], -1, self.spec.levels)
        return Tokens(ids=flat)

    def model_input(self, tokens: Tokens) -> torch.Tensor:
        """What ``forward`` trains on: flat ids here; a diffusion model's normalised latents."""
        return self.flat_ids(tokens)

    def fit(self, tokens: Tokens) -> None:
        """Measure what the model needs from its training tokens before training (nothing here;
        a diffusion model's latent scale)."""

    def loss(self, tokens: Tokens, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self(self.model_input(tokens), text_ids)

    # ------------------------------------------------------------------ classifier-free guidance

    def drop_captions(self, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption dropout: in training, each row becomes the empty prompt with probability
        ``config.cond_drop_prob``, so the model also learns the unconditional distribution that
        guidance needs. Returns (text ids, dropped: BoolTensor [B])."""
        if self.training and self.config.cond_drop_prob > 0:
            return drop_condition(text_ids, self.null_text(1, text_ids.device)[0], self.config.cond_drop_prob)
        return text_ids, torch.zeros(text_ids.shape[0], dtype=torch.bool, device=text_ids.device)

    def start_sampling(
        self, text_ids: torch.Tensor, sampling: SamplingConfig | None, known: torch.Tensor | None = None
    ) -> tuple[SamplingConfig, torch.Tensor, torch.Generator | None]:
        """The preamble of every sampler: the config (the defaults when None) and ``known`` checked
        against this generator (``check_request``); eval mode; the text rows to condition on, i.e.
        the prompts, then as many empty prompts when guided (``cfg_scale != 1``), so both run
        stacked in one batch; and the seeded random generator."""
        if sampling is None:
            sampling = SamplingConfig()
        elif not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        b, device = text_ids.shape[0], text_ids.device
        self.check_request(sampling, known, b)
        self.eval()
        rows = text_ids if sampling.cfg_scale == 1 else torch.cat([text_ids, self.null_text(b, device)])
        return sampling, rows, make_generator(sampling.seed, device)

    def check_request(self, sampling: SamplingConfig, known: torch.Tensor | None, batch: int) -> None:
        """What a request asks of this model, checked once (the rest of ``sampling`` was checked when
        it was built): ``sampling.budget`` and ``known`` only where the family takes them, not both;
        a budget of 1 to ``max_tokens`` ordered 1D tokens (a promptable tokenizer's); known ids
        [B, image_len], -1 where drawn anew, else ids of this vocabulary."""
        if sampling.budget is not None and not self.takes_budget:
            self.refuse("`sampling.budget`", "takes_budget",
                        "stopping after the first tokens needs a generator that draws them in order")
        if known is not None and not self.edits:
            self.refuse("`known`", "edits", "editing keeps token ids and draws the rest")
        if known is not None:
            if tuple(known.shape) != (batch, self.image_len):
                raise ValueError(f"`known` ids must be [{batch}, {self.image_len}] (-1 where to draw), got {tuple(known.shape)}")
            if sampling.budget is not None:
                raise ValueError("editing draws a region of a whole image; `known` does not combine with `sampling.budget`")
            if ((known < -1) | (known >= self.spec.vocab_size)).any():
                raise ValueError(f"`known` ids must be -1 or in [0, {self.spec.vocab_size}); these tokens are not this generator's")
        if sampling.budget is not None and (self.spec.grid is not None or sampling.budget > self.spec.max_tokens):
            raise ValueError(f"`sampling.budget` needs ordered 1D tokens (a promptable tokenizer) and 1 <= budget <= "
                             f"{self.spec.max_tokens}; got {sampling.budget} for {'grid' if self.spec.grid else '1D'} tokens")

    def refuse(self, argument: str, capability: str, why: str) -> None:
        """The one message for what a family cannot do: it names the generator, the argument, and
        the registered generators that can (those whose class attribute ``capability`` is True)."""
        able = [n for n in registry.names("generator") if getattr(registry.model_class("generator", n), capability)]
        raise ValueError(f"{self.registry_name} cannot take {argument}: {why} ({', '.join(able)} can)")

    def compile_steps(self, enabled: bool = True) -> "Generator":
        """Sample through ``torch.compile``d per-step functions (``nn.compiled``): the same tokens at
        fp32, each new batch shape compiled first (seconds to a minute). For a family that declares
        ``compiles``; the default is eager, which is faster on a CPU unless one compile serves many
        requests."""
        if enabled and not self.compiles:
            self.refuse("`compile=True`", "compiles", "it has no per-step function to compile")
        self.compiled_steps = enabled
        return self

    def run_step(self, step: Callable, *args: Any) -> Any:
        """``step(*args)``, a bound method of this model: compiled when ``compile_steps`` asked for it."""
        return compiled.call(step, *args) if self.compiled_steps else step(*args)

    @staticmethod
    def stack_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``x`` [B, ...] for the prompts -> the same for every row of ``rows`` (repeated when guided)."""
        return x if x.shape[0] == rows.shape[0] else x.repeat(rows.shape[0] // x.shape[0], *([1] * (x.ndim - 1)))

    @staticmethod
    def guide(out: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
        """Model output for stacked [conditional; unconditional] rows -> the guided output [batch, ...]
        (``uncond + scale * (cond - uncond)``); unguided output passes through."""
        return out if out.shape[0] == batch else cfg_combine(out[:batch], out[batch:], scale)

    def sample(self, text_ids: torch.Tensor, sampling: SamplingConfig | None = None,
               known: torch.Tensor | None = None) -> Tokens:
        raise NotImplementedError
