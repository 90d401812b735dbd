"""Which ragtune modules a stage script runs, read from the source: one list for dvc.yaml's deps and the resume
fingerprint.

A stage's output depends on every library module its script imports, directly or through another module, and
the code imports lazily (inside functions) to keep startup fast. Lists kept by hand drift: dvc.yaml's
train_embedder deps once left out ``retrieval.py``, whose ``model_prompt`` decides the training prompts, and the
resume fingerprint had the same gap. Both now come from :func:`stage_modules`, which parses imports with ``ast``
(module-level and function-level alike, nothing is run), and ``tests/test_dvc_deps.py`` holds dvc.yaml to it
with :func:`missing_deps`.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PACKAGE = "ragtune"
DEPS_FIX = "add it to the stage's deps in dvc.yaml"


def package_dir() -> Path:
    """The ragtune package folder this code runs from: the modules that are actually imported, hashed as they are."""
    return Path(__file__).resolve().parent


def module_file(name: str, root: Path) -> Path | None:
    """``ragtune.x.y`` → ``root/x/y.py`` or ``root/x/y/__init__.py`` (``root`` is the package folder), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def file_imports(path: Path, root: Path, module: str | None = None) -> set[str]:
    """The ragtune modules one file imports, anywhere in it (inside functions too: lazy imports still run).

    ``import ragtune.x`` → ``ragtune.x``; ``from ragtune.x import y`` → ``ragtune.x.y`` when that is a module,
    else ``ragtune.x``. ``module`` (the file's own dotted name) resolves relative imports; a stage script has none.
    An import of a ragtune module that does not exist is an error, never skipped.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()

    def add(name: str, node: ast.AST) -> None:
        if module_file(name, root) is None:
            raise ValueError(f"{path}:{getattr(node, 'lineno', '?')}: imports {name}, which is not in {root}")
        found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:
                    raise ValueError(f"{path}:{node.lineno}: a relative import outside the {PACKAGE} package")
                own = module.split(".")
                package = own if _is_package(path) else own[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if alias.name != "*" and module_file(sub, root) is not None else base, node)
    return found


def module_name(path: Path, root: Path) -> str:
    """``root/x/y.py`` → ``ragtune.x.y``; ``root/x/__init__.py`` → ``ragtune.x``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _parents(name: str) -> list[str]:
    """``ragtune.x.y`` → ``ragtune``, ``ragtune.x``: importing a module runs its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def stage_modules(script: str | Path, root: Path | None = None) -> list[Path]:
    """Every ragtune module file the script runs, transitively, sorted: what its dvc.yaml deps and the resume
    fingerprint must cover.

    Packages count too (``ragtune/__init__.py`` runs before any ragtune module), so a stage's list always holds
    it. ``root`` is the package folder to read, by default the one this code was imported from.
    """
    root = package_dir() if root is None else root.resolve()
    todo = sorted(file_imports(Path(script), root))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        assert path is not None  # file_imports only returns modules that exist
        todo.extend(sorted(file_imports(path, root, name) | set(_parents(name))))
    return sorted(p for p in (module_file(n, root) for n in seen) if p is not None)


def import_graph(root: Path | None = None) -> dict[str, set[str]]:
    """Module → the ragtune modules it imports (explicit imports only, at any level), for every module under
    ``root``. Packages run their ``__init__`` implicitly, which is not an edge: a package that imports its own
    submodule is the usual layout, not a circle."""
    root = package_dir() if root is None else root.resolve()
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        graph[name] = file_imports(path, root, name) - {name}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when the graph is acyclic (checked in sorted order, so the
    answer is the same every run)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def stage_scripts(cmd: str | list[str]) -> list[str]:
    """The Python scripts a dvc.yaml ``cmd`` runs (``python stages/x.py --flag``, ``torchrun ... stages/x.py``)."""
    commands = [cmd] if isinstance(cmd, str) else list(cmd)
    return [token for c in commands for token in shlex.split(c) if token.endswith(".py")]


def missing_deps(
    stages: Mapping[str, Mapping[str, Any]], repo_root: Path, allowed: Mapping[str, str] | None = None
) -> list[str]:
    """One message per stage script or ragtune module a stage runs but does not list in its deps.

    ``stages`` is dvc.yaml's ``stages`` mapping; paths are compared relative to ``repo_root`` (dvc.yaml's
    folder). ``allowed`` maps a module path that may be left out to the reason why. A stage whose ``cmd`` names
    no Python script is reported too: its deps could not be checked.
    """
    repo_root = repo_root.resolve()
    root = repo_root / "src" / PACKAGE
    allowed = allowed or {}
    problems = []
    for stage, spec in stages.items():
        deps = {str(d) for d in spec.get("deps", [])}
        scripts = stage_scripts(spec.get("cmd", ""))
        if not scripts:
            problems.append(f"stage {stage}: no Python script in cmd {spec.get('cmd')!r}, so its deps are unchecked")
        for script in scripts:
            needed = [script] + [p.relative_to(repo_root).as_posix() for p in stage_modules(repo_root / script, root)]
            problems += [
                f"stage {stage}: {path} is run by {script} but missing from its deps: {DEPS_FIX}"
                for path in needed
                if path not in deps and path not in allowed
            ]
    return problems


def extra_deps(stages: Mapping[str, Mapping[str, Any]], repo_root: Path) -> list[str]:
    """One message per ragtune module a stage lists in its deps but never runs.

    An extra dep is not wrong, only wasteful: editing that module makes ``dvc repro`` re-run the stage (a training
    stage takes minutes) for a change that cannot touch its outputs.
    """
    repo_root = repo_root.resolve()
    root = repo_root / "src" / PACKAGE
    problems = []
    for stage, spec in stages.items():
        listed = {str(d) for d in spec.get("deps", []) if str(d).startswith(f"src/{PACKAGE}/")}
        run = {
            p.relative_to(repo_root).as_posix()
            for script in stage_scripts(spec.get("cmd", ""))
            for p in stage_modules(repo_root / script, root)
        }
        problems += [
            f"stage {stage}: {path} is in its deps but the stage never runs it: remove it from dvc.yaml, or every "
            "edit to it re-runs the stage for nothing"
            for path in sorted(listed - run)
        ]
    return problems


def sync_dvc_yaml(dvc_yaml: Path) -> bool:
    """Rewrite each stage's ``src/ragtune/*`` deps in ``dvc_yaml`` to exactly the modules it runs (sorted, in place
    of the old lines, other deps and comments untouched). Returns whether the file changed.

    For contributors after moving code: ``python -m ragtune.deps`` (the tests above then pass by construction).
    """
    import yaml

    repo_root = dvc_yaml.resolve().parent
    root = repo_root / "src" / PACKAGE
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    lines = dvc_yaml.read_text(encoding="utf-8").split("\n")
    out: list[str] = []
    stage = None
    prefix = f"- src/{PACKAGE}/"
    for line in lines:
        head = re.match(r"  (\w+):$", line)
        if head:
            stage = head.group(1)
        if line.strip().startswith(prefix) and stage in stages:
            indent = line[: len(line) - len(line.lstrip())]
            if not any(o.strip().startswith(prefix) for o in out[-1:]):  # first module line of the block
                modules = sorted(
                    p.relative_to(repo_root).as_posix()
                    for script in stage_scripts(stages[stage].get("cmd", ""))
                    for p in stage_modules(repo_root / script, root)
                )
                out += [f"{indent}- {m}" for m in modules]
            continue
        out.append(line)
    text = "\n".join(out)
    changed = text != dvc_yaml.read_text(encoding="utf-8")
    if changed:
        dvc_yaml.write_text(text, encoding="utf-8")
    return changed


if __name__ == "__main__":
    print("dvc.yaml deps rewritten" if sync_dvc_yaml(Path("dvc.yaml")) else "dvc.yaml deps already exact")
