"""kgen's modules form layers that import one way: a module may import from its own layer or a
lower one, never from a higher one, and no set of modules imports itself in a circle. Every
import counts, including those inside functions (a late import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Low to high. A module belongs to the first entry naming it or a package above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kgen.version", "kgen.errors", "kgen.knobs", "kgen.types", "kgen.abi", "kgen.extent", "kgen.quant",
     "kgen.reference", "kgen.kvtensor", "kgen.paged", "kgen.caps", "kgen.variant", "kgen.problem", "kgen.shapes",
     "kgen.profiles", "kgen.select", "kgen.templates"),
    ("kgen.paths", "kgen.space"),                                    # what exists and why not
    ("kgen.render", "kgen.passes", "kgen.compile", "kgen.toolchain", "kgen.identity"),  # GLSL, SPIR-V
    ("kgen.runtime",),                                               # Vulkan only
    ("kgen.timing", "kgen.tunedb"),
    ("kgen.planning",),                                              # recipe, choice, Plan
    ("kgen.tune",),
    ("kgen.api", "kgen.tools", "kgen.models"),
    ("kgen.cli",),
    ("kgen",),                                                       # the package's public face
)
SOURCES = {"kgen": ROOT / "kgen", "kgen.runtime": ROOT / "runtime", "kgen.templates": ROOT / "templates"}


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "kgen" and parts[0] in ("runtime", "templates"):
                continue
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kgen modules `name` imports (a name imported from a package counts as its module
    when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            if name == "kgen" and members != ("kgen",):
                continue
            return index
    raise AssertionError(f"{name}: in no layer of tests/unit/test_layers.py; add it where it belongs")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_from_a_higher_layer():
    upward = sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                    for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checker_sees_late_imports_and_cycles():
    """The rules above can fail: a function-level import is an edge, and a circle is found."""
    edges = graph()
    assert "kgen.runtime" in edges["kgen.planning.probe"]          # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("kgen.runtime.context") < layer_of("kgen.planning.plan") < layer_of("kgen.cli.tune")
