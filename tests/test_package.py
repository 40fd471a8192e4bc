"""The package's public surface: every name in `__all__` resolves, and importing mlkit stays light."""

import subprocess
import sys

import mlkit


def test_every_public_name_resolves_and_dir_lists_it():
    assert "finetune" in dir(mlkit) and "audit" in dir(mlkit)
    for name in mlkit.__all__:
        assert getattr(mlkit, name) is not None, name


def test_import_mlkit_does_not_load_tensorflow():
    code = "import sys, mlkit; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# The stages, in the one direction they may import each other (docs/design.md, "What each stage may import"). Package-level
# modules not named here are shared helpers (errors, files, runs, ...) that import no stage.
STAGES = ["data", "bottlenecks", "tuning", "models"]
ABOVE_STAGES = {"auditing": 3, "looking": 3.5, "demo": 4, "cli": 4, "__main__": 4}


def import_graph():
    """{module: modules of mlkit it imports}, counting imports inside functions too."""
    import ast
    from pathlib import Path

    root = Path(mlkit.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                found.update(f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names)
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def rank(module):
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    if room in STAGES:
        return STAGES.index(room)
    return ABOVE_STAGES.get(room, -1)


def test_no_stage_imports_a_later_one_even_inside_a_function():
    graph = import_graph()
    assert len(graph) > 40
    backwards = [f"{module} -> {dep}" for module, deps in graph.items() for dep in deps
                 if rank(dep) > rank(module) and not (rank(module) == -1 and module == "mlkit")]
    assert backwards == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    seen, active, cycles = set(), [], []

    def visit(module):
        active.append(module)
        for dep in sorted(graph[module]):
            if dep in active:
                cycles.append(active[active.index(dep):] + [dep])
            elif dep not in seen:
                visit(dep)
        active.pop()
        seen.add(module)

    for module in sorted(graph):
        if module not in seen:
            visit(module)
    assert cycles == []
