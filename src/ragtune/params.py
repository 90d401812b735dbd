"""Loading params.yaml: stages read only their own section, so DVC's per-stage param tracking stays honest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A param is missing or has the wrong type; the message names the key and the file."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run stages from the repository root (where dvc.yaml is).")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of stage sections.")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in params or not isinstance(params[name], dict):
        raise ParamsError(f"params.yaml: missing section `{name}:`; see the README for its keys.")
    return params[name]
