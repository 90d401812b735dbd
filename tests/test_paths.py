"""dvc.yaml and ragtune.paths name the same artefacts: a path changed in one place only fails here."""

from pathlib import Path

import yaml

from ragtune.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
ARTEFACT_DIRS = (
    "data/interim",
    "data/chunks",
    "data/pairs",
    "data/negatives",
    "data/reranker",
    "models/",
    "metrics/",
    "reports/",
    "dvclive/",
)


def _names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_every_artefact_in_dvc_yaml_is_a_paths_entry() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    known = {str(p) for p in Paths().all()}
    listed = set()
    for spec in stages.values():
        for key in ("deps", "outs", "metrics", "plots"):
            listed |= {n for n in _names(spec.get(key)) if n.startswith(ARTEFACT_DIRS)}
    assert listed, "no artefact paths found in dvc.yaml"
    assert sorted(listed - known) == []


def test_every_paths_entry_is_in_dvc_yaml() -> None:
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    missing = [str(p) for p in Paths().all() if str(p) not in text]
    assert missing == []


def test_root_moves_the_whole_layout(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert all(p.is_relative_to(tmp_path) for p in paths.all())
    assert str(Paths().embedder) == "models/embedder"  # relative, as model cards and reports print it
