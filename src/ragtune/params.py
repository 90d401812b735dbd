"""Loading params.yaml: stages read only their own section, so DVC's per-stage param tracking stays honest."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Hashable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ragtune.errors import UserError
from ragtune.schema import (
    READ_ELSEWHERE,
    SECTIONS,
    TRAINER_SECTIONS,
    annotation_key,
    check_mapping,
    check_section,
    check_value,
    show,
    unknown_key,
)


class ParamsError(UserError, ValueError):
    """A param is missing or has the wrong type; the message names the key and the file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML keeps the last one
    silently, so a second ``min_chars:`` further down would quietly override the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, Hashable):
                continue  # SafeLoader itself refuses it, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one section (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _syntax_error(path: Path, text: str, err: yaml.YAMLError) -> ParamsError:
    """``params.yaml:LINE:COLUMN: what is wrong. How to fix it.`` for a file YAML cannot read."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or str(err)
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    if "\t" in line[: len(line) - len(line.lstrip())] or "'\\t'" in problem:
        fix = "YAML does not allow a tab here: indent with spaces, not tabs."
    elif "twice" in problem:
        fix = "Keep one of the two lines."
    else:
        fix = "Fix the YAML there: `key: value`, nested keys indented with spaces, a text holding `: ` or ` #` quoted."
    return ParamsError(f"{where}: {problem}. {fix}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml as a dict of sections; a syntax error names the file, line and column and the fix, and a
    section nobody reads (a typo of one) is refused."""
    data = read_yaml(path)
    known = [*SECTIONS, *TRAINER_SECTIONS]
    unknown = [unknown_key(str(path), k, known, what="section") for k in data if k not in known]
    if unknown:
        raise ParamsError("; ".join(unknown) + ".")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file the user writes (params.yaml, an out-of-domain set's ingest file); a syntax error
    names the file, line and column and the fix (a tab: indent with spaces)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run stages from the repository root (where dvc.yaml is).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8.") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # _UniqueKeyLoader is a SafeLoader
    except yaml.YAMLError as err:
        raise _syntax_error(path, text, err) from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys (`name: value`, one per line).")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``name`` section, checked against its schema (:mod:`ragtune.schema`) before any work starts.

    Unknown keys, missing keys, wrong types and out-of-range values are all reported at once, each with its key
    path and fix. The section is returned as read (values are checked, never converted), so valid params behave
    exactly as before. The trainer sections are returned unchecked: their typed configs check them.
    """
    if name not in params:
        close = difflib.get_close_matches(name, [str(k) for k in params], n=1)
        hint = f" (is `{close[0]}:` a typo of it?)" if close else ""
        raise ParamsError(f"params.yaml: missing section `{name}:`{hint}; the shipped params.yaml has its keys.")
    if not isinstance(params[name], dict):
        raise ParamsError(
            f"params.yaml {name} = {show(params[name])}: the section must be a mapping of keys, each on its own "
            f"line indented with spaces under `{name}:`, as in the shipped params.yaml."
        )
    if name in SECTIONS:
        problems = check_section(name, params[name])
        if problems:
            raise ParamsError("params.yaml " + "; ".join(problems) + ".")
    return params[name]


def key(params: dict[str, Any], path: str) -> Any:
    """One key of another stage's section (``train_embedder.max_seq_length``), type-checked: a stage that reads a
    single key of a section it does not own gets the same message for a bad value as its owner would."""
    name, _, rest = path.partition(".")
    if rest not in section(params, name):
        raise ParamsError(f"params.yaml {path}: missing; add it (the shipped params.yaml has every key).")
    value = params[name][rest]
    problems = check_value(path, value, READ_ELSEWHERE[path])
    if problems:
        raise ParamsError("params.yaml " + "; ".join(problems) + ".")
    return value


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
    # fields whose rule is more than their annotation's type (schema.TRAINER_KEYS): name → its schema Key
    KEYS: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Any:
        spec = {
            f.name: cls.KEYS.get(f.name) or annotation_key(f.type)
            for f in fields(cls)  # type: ignore[arg-type]
            if f.name != "extra"
        }
        # a single text stands for a one-item list (directions: query_to_doc)
        checked = {
            k: [v] if isinstance(v, str) and k in spec and spec[k].kind == "list" else v for k, v in params.items()
        }
        # unknown, missing and mistyped keys all at once (a renamed key is one unknown and one missing), before
        # int()/float() below could raise a bare ValueError on a value like "abc"
        problems = check_mapping(cls.SECTION, checked, spec)
        if problems:
            raise cls.ERROR("params.yaml " + "; ".join(problems) + ".")
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
    them; ``params`` itself is left unchanged. A dotted path reaches a nested key, as in ``dvc exp run -S``:
    ``train_reranker.late_interaction.attention_dropout=0`` changes that one key and keeps its siblings.

    Why: a benchmark varies a param the way an experiment would, so an override may only change a key params.yaml
    has; a typo would otherwise add a key nobody reads and the run would measure the unchanged config.
    """
    import copy

    params = copy.deepcopy(params)
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, name = key.split(".")
        node: Any = params
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not parents or not isinstance(node, dict) or name not in node:
            raise ParamsError(f"--set {item!r}: expected section.key=value with a key that params.yaml has")
        node[name] = yaml.safe_load(value)
    return params
