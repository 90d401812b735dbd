"""The repo's DVC config: the default path makes no network call (DVC's usage analytics are on unless turned off)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dvc_analytics_are_off_in_the_committed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config", encoding="utf-8")
    assert config.get("core", "analytics") == "false"  # `dvc config core.analytics false`

    from dvc import analytics

    for var in ("DVC_TEST", "DVC_NO_ANALYTICS"):  # either would turn analytics off whatever the config says
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(REPO)
    assert analytics.is_enabled() is False  # what DVC itself reads: the repo config wins over a user's default


def test_every_cached_stage_output_is_git_ignored_so_a_repro_leaves_no_stray_gitignore() -> None:
    """DVC writes a ``.gitignore`` beside any cached output git does not ignore yet: on a fresh clone a ``dvc repro``
    would leave untracked files behind (``data/.gitignore`` for data/bm25 did). Each one is ignored up front."""
    import subprocess

    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outs = sorted(
        {
            path
            for stage in stages.values()
            for out in stage.get("outs", [])
            for path, opts in ([(out, {})] if isinstance(out, str) else out.items())
            if (opts or {}).get("cache", True)
        }
    )
    assert "data/bm25" in outs
    result = subprocess.run(["git", "check-ignore", "--no-index", *outs], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == outs
