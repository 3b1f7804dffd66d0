"""The transformer's fused self-attention projection: state dicts and optimizer states saved with
self-attention's q and kv apart load into it, every output and every optimizer step unchanged."""

import copy

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trilemma import checkpoint, registry
from trilemma.data.text import TextTokenizer
from trilemma.generators.sampling import SamplingConfig
from trilemma.nn.transformer import Transformer, TransformerConfig, fused_optimizer_state
from trilemma.tokens import TokenSpec


def unfused(state: dict) -> dict:
    """``state`` with each self-attention's qkv weight split into q and kv, in its place."""
    out = {}
    for name, t in state.items():
        if name.endswith("attn.qkv.weight"):
            q, kv = t.split([t.shape[1], 2 * t.shape[1]])
            out[name.replace("qkv.", "q.")], out[name.replace("qkv.", "kv.")] = q.clone(), kv.clone()
        else:
            out[name] = t
    return out


def unfuse_modules(net: Transformer) -> Transformer:
    """``net`` with each self-attention's ``qkv`` replaced by ``q`` and ``kv`` (same weights), registered
    first: the parameter order of a model built with them apart."""
    for block in net.blocks:
        attn, dim = block.attn, block.attn.out.in_features
        q, kv = nn.Linear(dim, dim, bias=False), nn.Linear(dim, 2 * dim, bias=False)
        q.weight.data, kv.weight.data = (w.clone() for w in attn.qkv.weight.data.split([dim, 2 * dim]))
        attn._modules = {"q": q, "kv": kv, "out": attn.out}
    return net


def test_an_unfused_state_dict_loads_and_gives_identical_outputs():
    torch.manual_seed(0)
    for context_dim in (None, 24):
        net = Transformer(TransformerConfig(32, 2, 4), context_dim=context_dim).eval()
        old = unfused(net.state_dict())
        assert not any(k.endswith("qkv.weight") for k in old) and any(k.endswith("attn.q.weight") for k in old)
        fresh = Transformer(TransformerConfig(32, 2, 4), context_dim=context_dim).eval()
        fresh.load_state_dict(old)  # strict: nothing missing, nothing left over
        x, context = torch.randn(2, 7, 32), torch.randn(2, 5, 24) if context_dim else None
        assert torch.equal(fresh(x, context=context, causal=True), net(x, context=context, causal=True))


def test_an_unfused_checkpoint_loads_and_samples_the_same_tokens(tmp_path):
    text = TextTokenizer.build(["a red circle", "a blue square"], max_length=6)
    torch.manual_seed(0)
    gen = registry.build("generator", "dalle-tiny", spec=TokenSpec("discrete", 16, vocab_size=32, grid=(4, 4)), text=text)
    path = checkpoint.save(gen, tmp_path / "gen")
    weights = path / checkpoint.WEIGHTS_FILE
    save_file(unfused(load_file(str(weights))), str(weights))
    loaded = checkpoint.load(path)
    ids, sampling = text.encode(["a red circle", "a blue square"]), SamplingConfig(seed=3, top_k=8, cfg_scale=2.0)
    assert torch.equal(loaded.sample(ids, sampling).ids, gen.sample(ids, sampling).ids)


def test_an_unfused_optimizer_state_resumes_as_the_fused_one_would():
    torch.manual_seed(0)
    fused = Transformer(TransformerConfig(16, 2, 2))
    old = unfuse_modules(copy.deepcopy(fused))

    def groups(model):  # two groups, as a task that decays matrices only builds them
        named = list(model.named_parameters())
        return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]

    opts = {m: torch.optim.AdamW(groups(m), lr=1e-2) for m in (fused, old)}
    for _ in range(2):
        grads = {n: torch.randn_like(p) for n, p in fused.named_parameters()}
        for name, p in fused.named_parameters():
            p.grad = grads[name]
        old_grads = unfused(grads)
        for name, p in old.named_parameters():
            p.grad = old_grads[name]
        for opt in opts.values():
            opt.step()
    want = opts[fused].state_dict()
    got = fused_optimizer_state(opts[old].state_dict(), old.state_dict(), fused, opts[fused])
    assert got["param_groups"] == want["param_groups"] and got["state"].keys() == want["state"].keys()
    for i, state in want["state"].items():
        assert all(torch.equal(state[k], got["state"][i][k]) for k in state)
    assert fused_optimizer_state(want, fused.state_dict(), fused, opts[fused]) is want  # fused already: as it is
