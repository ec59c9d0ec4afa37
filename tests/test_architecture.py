"""The package's shape: subpackages by concept whose imports run one way (imports inside functions count)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import autoprune

PACKAGE = Path(autoprune.__file__).resolve().parent

#: Each room and the rooms it may import. The order is the one-way rule of docs/architecture.md.
ALLOWED = {
    "core": set(),
    "training": {"core"},
    "tasks": {"core", "training"},
    "pruning": {"core"},
    "latency": {"core", "tasks", "pruning"},
    "results": {"core"},
    "engine": {"core", "training", "tasks", "pruning", "latency", "results"},
    "deploy": {"core", "training", "tasks", "pruning", "latency", "results", "engine"},
    "testing": {"core", "training", "tasks", "pruning", "latency", "results", "engine"},
    "api": {"core", "training", "tasks", "pruning", "latency", "results", "engine", "deploy"},
    "cli": {"core", "training", "tasks", "pruning", "latency", "results", "engine", "deploy", "api"},
    "agent": set(),
    "_moved": set(),
}
#: What may never be imported by a room, whatever the rule above says.
FORBIDDEN_THIRD_PARTY = {"core": {"torch", "torch_pruning", "optuna", "ray"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package (and every top-level third-party package) ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                b = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(b + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    out = {}
    for name, path in mods.items():
        out[name] = set()
        for target in imports(name, path, known):
            if target in known and target != name and not name.startswith(target + "."):
                out[name].add(target)
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "autoprune"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_every_module_lives_in_a_room():
    top = sorted(m for m in modules() if m.count(".") == 1 and room(m) not in ALLOWED and m != "autoprune")
    assert top == [], f"modules outside the rooms of docs/architecture.md: {top}"


def test_imports_run_one_way_between_rooms():
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in targets
        if room(m) in ALLOWED and room(t) != room(m) and room(t) != "autoprune" and room(t) not in ALLOWED[room(m)]
    )
    assert wrong == []


def test_core_imports_no_heavy_framework():
    mods = modules()
    known = set(mods)
    bad = {
        name: sorted(t.split(".")[0] for t in imports(name, path, known) if t.split(".")[0] in FORBIDDEN_THIRD_PARTY["core"])
        for name, path in mods.items()
        if room(name) == "core"
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_importing_the_config_does_not_import_torch():
    """`autoprune.core` is plain data: reading and validating a config stays fast and light."""
    code = "import sys, autoprune.core.config, autoprune.core.records; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_old_module_paths_still_import_with_a_deprecation_warning():
    code = (
        "import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    importlib.import_module('autoprune.executor')\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import autoprune.executor, autoprune.lut.table, autoprune.engine.executor, autoprune.latency.lut.table\n"
        "print(autoprune.executor is autoprune.engine.executor, autoprune.lut.table is autoprune.latency.lut.table)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warned autoprune.executor moved to autoprune.engine.executor" in done.stdout
    assert done.stdout.strip().endswith("True True")
