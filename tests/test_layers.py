"""The package's layers, as ARCHITECTURE.md's table declares them: a module imports only modules
of its own layer or those below, Ray only in the layers marked `ray`, and no import cycle.

The table is read from ARCHITECTURE.md itself (the ```layers block), so the map and the rule
cannot drift apart. Every import counts, including those inside functions.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"autoal": ROOT / "platform" / "autoal", "autoal.strategies": ROOT / "strategies"}


def layers() -> list[tuple[str, list[str], bool]]:
    """(layer, module prefixes, may import Ray), bottom first, from ARCHITECTURE.md."""
    block = re.search(r"```layers\n(.*?)```", (ROOT / "ARCHITECTURE.md").read_text(), re.S).group(1)
    rows = [line.split("|") for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return [(name.strip(), mods.split(), "ray" in extra) for name, mods, extra in rows][::-1]   # drawn top down


def modules() -> dict[str, Path]:
    """Every module of the package, dotted name -> file."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else [parts[-1]])))
            found.setdefault(name, path)
    return found


def layer_of(module: str, table) -> int:
    """The index of the layer a module belongs to: its longest matching prefix."""
    best = max(((len(p), i) for i, (_, prefixes, _) in enumerate(table) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md's table"
    return best[1]


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules (and 'ray') that `module` imports anywhere in its file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from . import x (strategies)
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "ray" or name.startswith("ray."):
                out.add("ray")
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_every_import_goes_down_and_ray_stays_in_its_layers():
    table, wrong = layers(), []
    for module, targets in graph().items():
        here = layer_of(module, table)
        for target in targets:
            if target == "ray":
                if not table[here][2]:
                    wrong.append(f"{module} imports ray outside the Ray layers")
            elif layer_of(target, table) > here:
                wrong.append(f"{module} ({table[here][0]}) imports {target} ({table[layer_of(target, table)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    edges = {m: {t for t in ts if t != "ray"} for m, ts in graph().items()}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_importing_each_layer_loads_nothing_above_it():
    """In a fresh interpreter, the layers imported bottom up: what each pulls in, third-party imports
    included, lies in it or below it, and Ray arrives with the first layer marked `ray`."""
    table, known = layers(), modules()
    by_layer = [[m for m in known if layer_of(m, table) == i] for i in range(len(table))]
    code = ("import json, sys\nseen = []\n"
            f"for mods in {by_layer!r}:\n"
            "    for m in mods: __import__(m)\n"
            "    seen.append(sorted(m for m in sys.modules if m.split('.')[0] in ('autoal', 'ray')))\n"
            "print(json.dumps(seen))")
    seen = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=ROOT).stdout)
    for index, loaded in enumerate(seen):
        name = table[index][0]
        above = [m for m in loaded if m in known and layer_of(m, table) > index]
        assert not above, f"importing layer {name} loads {above}"
        if not any(ray for _, _, ray in table[:index + 1]):
            assert "ray" not in loaded, f"importing layer {name} loads Ray"
