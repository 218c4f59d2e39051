"""The package's layers: every import, at module level or inside a function, goes to the same
layer or a lower one, and the modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "job" / "squadft"

# Lowest first. A module belongs to the first entry that is it or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("squadft.errors", "squadft.console"),  # what everything may say or raise
    ("squadft.io", "squadft.filespec"),  # files written atomically; data file specs
    ("squadft.config",),  # the one Config, its defaults and presets
    ("squadft.runtime",),  # process group, precision, preemption signals
    ("squadft.storage",),  # manifests, S3
    ("squadft.data",),  # pull, parse, select, tokenize
    ("squadft.modeling",),  # loading models and tokenizers, window checks
    ("squadft.evaluate",),  # inference, post-processing, metrics, calibration, output files
    ("squadft.train",),  # the training loop, checkpoints, tracking
    ("squadft.flows",),  # orchestration: every flow a command runs
    ("squadft.report",),  # `squadft report`
    ("squadft.cli", "squadft.__main__", "squadft"),  # the entry points
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names
               if name != "squadft"):
            return index
    if module == "squadft":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """squadft modules that `module` imports, anywhere in `source` (functions included)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from squadft.x import y` may name the module squadft.x.y
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/"))).is_dir()
                          or (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file()
                          else base)
    return {name for name in found if name == "squadft" or name.startswith("squadft.")}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {module: imports_of(path) for module, path in MODULES.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up_a_layer(module: str) -> None:
    upward = sorted(target for target in GRAPH[module]
                    if target != "squadft" and layer_of(target) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports higher layers: {upward}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target not in MODULES or target == "squadft":
                continue
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_imports_inside_functions_and_can_fail() -> None:
    # the arrow this layout removed: storage.checkpoints reading train.checkpoint's manifest
    source = ("def f():\n    from ..train.checkpoint import verify_manifest\n"
              "    import squadft.cli\n")
    found = imports_in(source, "squadft.storage.checkpoints")
    assert found == {"squadft.train.checkpoint", "squadft.cli"}
    assert all(layer_of(target) > layer_of("squadft.storage.checkpoints") for target in found)
    assert imports_in("from squadft.flows import training\n", "squadft.cli") == {
        "squadft.flows.training"}


def long_functions(source: str, limit: int = 60) -> list[tuple[str, int]]:
    """(name, lines) of the functions in `source` longer than `limit` lines (decorators
    included), unless the line before the def says why ("# long: ...")."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            length = node.end_lineno - start + 1
            explained = start >= 2 and lines[start - 2].strip().startswith("# long:")
            if length > limit and not explained:
                found.append((node.name, length))
    return found


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = {module: found for module, path in MODULES.items()
                if (found := long_functions(path.read_text()))}
    assert not too_long, f"split these into named phases (or say why): {too_long}"
    body = "\n".join(f"    x = {i}" for i in range(60))
    assert long_functions(f"def f():\n{body}\n") == [("f", 61)]
    assert long_functions(f"# long: one table\ndef f():\n{body}\n") == []
