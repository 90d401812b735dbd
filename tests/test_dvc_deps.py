"""dvc.yaml's deps and the resume fingerprint cover every ragtune module a stage runs; ragtune's imports form no circle.

Read from the source with ``ast`` (see :mod:`ragtune.deps`): nothing is imported or run, so these tests are fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ragtune.deps import DEPS_FIX, extra_deps, find_cycle, import_graph, missing_deps, stage_modules, stage_scripts

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ragtune"

# Modules a stage may run without listing them in its deps: path → why. Empty on purpose: every module, even
# console.py (progress bars) and io.py (it decides the bytes of every output file), is a dep, because a module
# that "only prints" today can decide something tomorrow, and nobody re-checks this list when it does.
ALLOWED_MISSING: dict[str, str] = {}


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_every_stage_lists_the_ragtune_modules_it_runs():
    problems = missing_deps(_stages(), REPO, ALLOWED_MISSING)
    assert not problems, "\n".join(problems)


def test_no_stage_lists_a_ragtune_module_it_does_not_run():
    problems = extra_deps(_stages(), REPO)
    assert not problems, "\n".join(problems)


def test_extra_deps_names_the_module_and_the_stage(tmp_path):
    stages = {"train_embedder": {**_stages()["train_embedder"]}}
    stages["train_embedder"]["deps"] = [*stages["train_embedder"]["deps"], "src/ragtune/cli.py"]
    problems = extra_deps(stages, REPO)
    assert len(problems) == 1 and problems[0].startswith("stage train_embedder: src/ragtune/cli.py is in its deps")


def test_every_stage_runs_a_script_the_checker_can_read():
    for name, spec in _stages().items():
        assert stage_scripts(spec["cmd"]), f"stage {name}: no Python script in cmd {spec['cmd']!r}"


def test_checker_fails_when_a_stage_gains_an_import_without_its_dep(tmp_path):
    """The real train_embedder script plus one lazy import (what the library does to keep startup fast), checked
    against the real dvc.yaml entry: the new module, and what it imports in turn, must be reported."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "ragtune", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stages").mkdir()
    script = (REPO / "stages" / "train_embedder.py").read_text(encoding="utf-8")
    (tmp_path / "stages" / "train_embedder.py").write_text(
        script + "\n\ndef later() -> None:\n    from ragtune import cli  # noqa: F401\n", encoding="utf-8"
    )
    stages = {"train_embedder": _stages()["train_embedder"]}
    assert missing_deps(stages, REPO) == []  # the untouched script passes

    problems = missing_deps(stages, tmp_path)
    assert any("src/ragtune/cli.py" in p for p in problems), problems
    assert any("src/ragtune/search.py" in p for p in problems), problems  # cli imports search: transitive
    for p in problems:
        assert p.startswith("stage train_embedder: ") and p.endswith(DEPS_FIX), p


def _package(root: Path, files: dict[str, str]) -> Path:
    """A throwaway repo: ``files`` maps repo-relative paths to source text."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_every_import_form_is_followed(tmp_path):
    repo = _package(
        tmp_path,
        {
            "src/ragtune/__init__.py": "",
            "src/ragtune/a.py": "from ragtune import b, VERSION\n",
            "src/ragtune/b.py": "def f():\n    import ragtune.c\n",
            "src/ragtune/c.py": "from ragtune.sub.d import thing\n",
            "src/ragtune/sub/__init__.py": "from . import e\n",
            "src/ragtune/sub/d.py": "from .e import thing\n",
            "src/ragtune/sub/e.py": "thing = 1\n",
            "src/ragtune/unused.py": "",
            "stages/s.py": "import json\n\nfrom ragtune.a import x\n",
        },
    )
    found = [
        p.relative_to(repo / "src/ragtune").as_posix()
        for p in stage_modules(repo / "stages/s.py", repo / "src/ragtune")
    ]
    assert found == ["__init__.py", "a.py", "b.py", "c.py", "sub/__init__.py", "sub/d.py", "sub/e.py"]

    deps = ["stages/s.py", *(f"src/ragtune/{f}" for f in found)]
    stage = {"s": {"cmd": "torchrun --nproc_per_node 2 stages/s.py --fast", "deps": deps}}
    assert missing_deps(stage, repo) == []
    stage["s"]["deps"] = [d for d in deps if d != "src/ragtune/c.py"]
    assert missing_deps(stage, repo) == [
        f"stage s: src/ragtune/c.py is run by stages/s.py but missing from its deps: {DEPS_FIX}"
    ]
    assert missing_deps(stage, repo, {"src/ragtune/c.py": "a reason"}) == []
    assert missing_deps({"s": {"cmd": "echo hi", "deps": []}}, repo) == [
        "stage s: no Python script in cmd 'echo hi', so its deps are unchecked"
    ]


def test_an_import_of_a_missing_module_is_an_error(tmp_path):
    repo = _package(tmp_path, {"src/ragtune/__init__.py": "", "stages/s.py": "from ragtune.gone import x\n"})
    with pytest.raises(ValueError, match=r"ragtune\.gone"):
        stage_modules(repo / "stages/s.py", repo / "src/ragtune")


def test_the_resume_fingerprints_hash_what_the_trainers_run():
    """The gap issue 15 found: retrieval.model_prompt decides the training prompts, yet was not hashed. The resume
    fingerprint hashes the run module and every module it runs (``code_hashes``): that must cover every module
    dvc.yaml lists for the stage, so a change that re-runs the stage never resumes a checkpoint of the old code."""
    for stage, run in (("train_embedder", "train/embedder/run.py"), ("train_reranker", "train/reranker/run.py")):
        hashed = {PACKAGE / run, *stage_modules(PACKAGE / run, PACKAGE)}
        assert set(stage_modules(REPO / "stages" / f"{stage}.py", PACKAGE)) <= hashed
        assert {"retrieval.py", "resolve.py", "params.py", "schedule.py"} <= {p.name for p in hashed}
        assert "code_hashes(__file__)" in (PACKAGE / run).read_text(encoding="utf-8")


def test_ragtune_imports_form_no_circle():
    graph = import_graph(PACKAGE)
    assert "ragtune.train.rows" in graph["ragtune.train.batching"]
    assert "ragtune.train.batching" in graph["ragtune.train.embedder.trainer"]  # a function-level import counts too
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


def test_the_circle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
