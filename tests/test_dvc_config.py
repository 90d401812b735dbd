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
