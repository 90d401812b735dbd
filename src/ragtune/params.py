"""Loading params.yaml: stages read only their own section, so DVC's per-stage param tracking stays honest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from ragtune.errors import UserError


class ParamsError(UserError, ValueError):
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


def missing_keys_message(section_name: str, missing: list[str]) -> str:
    """What to say about keys absent from a params section: which, where, and how to fix it."""
    return (
        f"params.yaml {section_name}: missing key(s) {', '.join(missing)}: add them (see the shipped params.yaml "
        "for the defaults and their meaning). A missing key is an error, never filled in from a default in the "
        "code: params.yaml is the one place defaults live."
    )


class StageConfig:
    """Base for a stage's typed config dataclass: built from its params section, which must hold every key.

    Subclasses are dataclasses whose field names are the params.yaml keys; they set ``SECTION`` (the params section)
    and ``ERROR`` (the exception type to raise), and may override :meth:`validate`. An ``extra`` field, if present,
    is never read from params.

    params.yaml is the one place a default lives: the fields have none, and :meth:`from_params` refuses a section
    with a key missing just as it refuses one with a key nobody reads. A second set of defaults in the code drifts
    from the file (they disagreed on 10 keys, e.g. ``scale`` 20 vs 100), and filling a gap from it would train an
    old params.yaml with values nobody chose, silently.
    """

    SECTION = "stage"
    ERROR: type[ValueError] = ParamsError
    # fields that do not change the training trajectory, so a change to them may resume a checkpoint
    NOT_IN_FINGERPRINT = ("extra", "logging_steps", "dataloader_num_workers")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        unknown = sorted(set(params) - known)
        missing = sorted(known - set(params))
        problems = []
        if unknown:
            problems.append(
                f"params.yaml {cls.SECTION}: unknown key(s) {unknown}. Known keys: {sorted(known)}. "
                "A param the trainer does not read would be silently ignored, so it is refused instead."
            )
        if missing:
            problems.append(missing_keys_message(cls.SECTION, missing))
        if problems:  # both at once: a renamed key shows up as one unknown and one missing
            raise cls.ERROR(" ".join(problems))
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            v = params[f.name]
            if str(f.type).startswith("tuple"):
                item = str if "str" in str(f.type) else int
                v = tuple(item(x) for x in ([v] if isinstance(v, str) else v or ()))
            elif f.type in ("int", int):
                v = int(v)
            elif f.type in ("float", float):
                v = float(v)
            elif f.type in ("bool", bool):
                v = bool(v)
            elif f.type in ("str", str):
                v = str(v)
            values[f.name] = v
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Range and choice checks; raise ``ERROR`` with the ``SECTION.key`` in the message."""

    def fingerprint(self, *inputs: str) -> str:
        """Hash of everything that changes the training trajectory: resuming across a change would be wrong."""
        payload = json.dumps(
            {k: v for k, v in asdict(self).items() if k not in self.NOT_IN_FINGERPRINT},  # type: ignore[call-overload]
            sort_keys=True,
        )
        h = hashlib.sha256(payload.encode())
        for item in inputs:
            h.update(b"\x00" + item.encode())
        return h.hexdigest()[:16]


def with_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``params`` with ``section.key=value`` overrides applied (value parsed as YAML), as ``dvc exp run -S`` applies
    them; ``params`` itself is left unchanged.

    Why: a benchmark varies a param the way an experiment would, so an override may only change a key params.yaml
    has; a typo would otherwise add a key nobody reads and the run would measure the unchanged config.
    """
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for item in overrides:
        key, _, value = item.partition("=")
        section_name, _, name = key.partition(".")
        if not name or section_name not in params or name not in params[section_name]:
            raise ParamsError(f"--set {item!r}: expected section.key=value with a key that params.yaml has")
        params[section_name][name] = yaml.safe_load(value)
    return params
