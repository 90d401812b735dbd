"""params.yaml is checked before any work: syntax errors with line and column, and in every section unknown keys,
missing keys, wrong types and out-of-range values, each reported with its key path and fix.

The schema is iterated, so a section or key added later is covered by the generic tests without a new test.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragtune.errors import UserError
from ragtune.ingest import IngestError, load_config
from ragtune.params import ParamsError, key, load_params, section
from ragtune.schema import SECTIONS, Key
from ragtune.train.embedder.config import EmbedderTrainConfig, TrainConfigError
from ragtune.train.reranker.config import RerankerTrainConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "params.yaml", *sorted((REPO / "examples").glob("*.params.yaml"))]
TRAINER_CONFIGS = (EmbedderTrainConfig, RerankerTrainConfig)
DELETE = object()  # with_value: remove the key


def shipped() -> dict[str, Any]:
    return load_params(REPO / "params.yaml")


def with_value(params: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``params`` with the key at ``path`` (``pairs.synthetic.per_doc.title``) set, or deleted when
    ``value`` is ``DELETE``."""
    params = copy.deepcopy(params)
    *parents, last = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return params


def refusal(params: dict[str, Any], name: str) -> str:
    with pytest.raises(ParamsError) as err:
        section(params, name)
    assert isinstance(err.value, UserError)
    return str(err.value)


def schema_keys(fields: dict[str, Key], prefix: str) -> list[tuple[str, Key]]:
    """Every key path of a section's schema, nested maps included."""
    out = []
    for name, k in fields.items():
        out.append((f"{prefix}.{name}", k))
        if k.kind == "map" and k.fields:
            out += schema_keys(k.fields, f"{prefix}.{name}")
    return out


ALL_KEYS = [kp for name, fields in SECTIONS.items() for kp in schema_keys(fields, name)]


# ---------------------------------------------------------------- the file


def test_a_tab_is_an_error_with_line_column_and_fix(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("chunk:\n  max_tokens: 256\n\toverlap_tokens: 32\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"params.yaml:3:1: .*indent with spaces, not tabs"):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("ingest:\n  root: a: b\n", "params.yaml:2:"),  # an unquoted ': ' in a value
        ("evaluate:\n  ks: [1, 3\n", "params.yaml:3:"),  # an unclosed list
        ("ingest:\n  min_chars: 20\n  min_chars: 30\n", "params.yaml:3:3: key 'min_chars' appears twice"),
    ],
)
def test_other_yaml_errors_name_line_and_column(tmp_path, text, where):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert where in str(err.value) and "Traceback" not in str(err.value)


def test_an_unknown_section_is_refused_with_the_closest_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("chunks:\n  max_tokens: 256\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"unknown section chunks \(did you mean chunk\?\)"):
        load_params(path)


def test_a_missing_or_empty_section_is_refused():
    params = shipped()
    del params["chunk"]
    assert "missing section `chunk:`" in refusal(params, "chunk")
    params["chunk"] = None
    assert "chunk = null" in refusal(params, "chunk")


# ---------------------------------------------------------------- every shipped file is valid


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_params_file_validates(path):
    params = load_params(path)
    for name in SECTIONS:
        assert section(params, name) is params[name]  # checked, returned as read: valid params behave as before
    for cls in TRAINER_CONFIGS:
        cls.from_params(section(params, cls.SECTION))
    assert key(params, "train_embedder.max_seq_length") == params["train_embedder"]["max_seq_length"]


# The keys each example changes on purpose (its header says which); every other value must follow params.yaml, or a
# default changed later silently stays old in the example a user copies (attention_dropout did, until 2026-12-05).
EXAMPLE_CHANGES = {
    "alqac2023.params.yaml": {"pairs.dev_ratio", "pairs.test_ratio", "train_embedder.max_seq_length"},
    "alqac2023-fixed.params.yaml": {"pairs.dev_ratio", "pairs.test_ratio", "train_embedder.max_seq_length"},
}


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of a nested mapping."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@pytest.mark.parametrize("path", SHIPPED[1:], ids=lambda p: p.name)
def test_every_example_follows_the_shipped_defaults(path):
    assert path.name in EXAMPLE_CHANGES, f"{path.name}: list the keys it changes in EXAMPLE_CHANGES"
    base = {k: v for k, v in flat(shipped()).items() if not k.startswith("ingest.")}
    example = {k: v for k, v in flat(load_params(path)).items() if not k.startswith("ingest.")}
    assert example.keys() == base.keys()
    differ = {k for k in base if example[k] != base[k]}
    assert differ == EXAMPLE_CHANGES[path.name], {
        k: (base[k], example.get(k)) for k in differ ^ EXAMPLE_CHANGES[path.name]
    }


def test_the_sample_ingest_file_validates():
    data = yaml.safe_load((REPO / "examples/sample-ingest.yaml").read_text(encoding="utf-8"))
    assert load_config(data, repo=REPO / "examples").documents


def test_the_schema_covers_exactly_the_shipped_keys():
    """A key in params.yaml without a schema entry (or the reverse) fails here, not in a user's run."""
    params = shipped()
    for name, fields in SECTIONS.items():
        shipped_paths = {p for p, _ in schema_keys({k: Key("any") for k in params[name]}, name)}
        assert shipped_paths == {f"{name}.{k}" for k in fields}, name


# ---------------------------------------------------------------- unknown, missing, wrong type: every key


@pytest.mark.parametrize("path", [p for p, k in ALL_KEYS if k.kind == "map"] + list(SECTIONS))
def test_an_unknown_key_is_refused_in_every_section(path):
    name = path.split(".")[0]
    params = with_value(shipped(), f"{path}.not_a_key", 1)
    assert f"{path}: unknown key not_a_key" in refusal(params, name)


@pytest.mark.parametrize("path", [p for p, _ in ALL_KEYS])
def test_a_missing_key_is_refused_in_every_section(path):
    parent, _, last = path.rpartition(".")
    message = refusal(with_value(shipped(), path, DELETE), path.split(".")[0])
    assert f"{parent}: missing key(s) {last}" in message


def wrong_value(k: Key) -> Any:
    """A value of the wrong kind for ``k``."""
    return {"int": "abc", "float": "abc", "bool": "yes", "str": 3, "choice": "nope", "list": "x", "map": 3}[k.kind]


@pytest.mark.parametrize("path", [p for p, k in ALL_KEYS if k.kind != "any"])
def test_a_wrong_type_is_refused_for_every_key(path):
    k = dict(ALL_KEYS)[path]
    value = wrong_value(k)
    message = refusal(with_value(shipped(), path, value), path.split(".")[0])
    assert f"{path} = " in message and "set it to" in message


@pytest.mark.parametrize("cls", TRAINER_CONFIGS, ids=lambda c: c.SECTION)
def test_trainer_configs_refuse_unknown_missing_and_wrong_types(cls):
    sec = section(shipped(), cls.SECTION)
    with pytest.raises(cls.ERROR, match=rf"{cls.SECTION}: unknown key batch_sise \(did you mean batch_size\?\)"):
        cls.from_params({**sec, "batch_sise": 4})
    for name in sec:
        with pytest.raises(cls.ERROR, match=rf"{cls.SECTION}: missing key\(s\) {name}"):
            cls.from_params({k: v for k, v in sec.items() if k != name})
    for name, value in [("lr", "abc"), ("batch_size", [4]), ("seed", 1.5), ("load_best_model_at_end", "false")]:
        with pytest.raises(cls.ERROR) as err:
            cls.from_params({**sec, name: value})
        assert isinstance(err.value, UserError) and f"{cls.SECTION}.{name} = " in str(err.value)


def test_trainer_configs_keep_what_they_read_before():
    """A float written 5e-5 (a string to YAML 1.1) and a single direction written without a list still work."""
    sec = section(shipped(), "train_embedder")
    cfg = EmbedderTrainConfig.from_params({**sec, "lr": "5e-5", "directions": "query_to_doc"})
    assert cfg.lr == 5e-5 and cfg.directions == ("query_to_doc",)
    with pytest.raises(TrainConfigError, match=r"train_embedder.matryoshka_dims\[1\] = \"x\""):
        EmbedderTrainConfig.from_params({**sec, "matryoshka_dims": [64, "x"]})


# ---------------------------------------------------------------- the cases named by issue 16


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("ingest.min_chars", "hai mươi", 'ingest.min_chars = "hai mươi" is not a number: set it to a whole number ≥ 0'),
        ("ingest.min_chars", [20], "ingest.min_chars = [20] is not a number"),
        ("ingest.min_chars", -5, "ingest.min_chars = -5 is out of range: set it to a whole number ≥ 0"),
        ("ingest.min_chars", 2.5, "ingest.min_chars = 2.5 is not a whole number"),
        (
            "ingest.max_bad_fraction",
            -0.1,
            "ingest.max_bad_fraction = -0.1 is out of range: set it to a number in [0, 1]",
        ),
        ("ingest.tone_style", "mới", 'ingest.tone_style = "mới" is not an allowed value: set it to one of old, new'),
        ("ingest.documents", [], "ingest.documents = [] is an empty list"),
        ("pairs.dev_ratio", -0.1, "pairs.dev_ratio = -0.1 is out of range: set it to a number in [0, 1]"),
        ("pairs.test_ratio", 0.9, "pairs.dev_ratio (0.15) + pairs.test_ratio (0.9) = 1.05 is over 1"),
        ("pairs.synthetic.per_doc.title", "one", 'pairs.synthetic.per_doc.title = "one" is not a number'),
        ("pairs.synthetic.enabled", "yes", 'pairs.synthetic.enabled = "yes" is not an allowed value: set it to one'),
        ("pairs.synthetic.ict_keep_sentence", 1.5, "pairs.synthetic.ict_keep_sentence = 1.5 is out of range"),
        ("model.revision", 3, "model.revision = 3 is not a text (put it in quotes"),
        ("model.max_seq_length", 0, "model.max_seq_length = 0 is out of range: set it to a whole number ≥ 1"),
        ("model.devices", "cuda", 'model.devices is "cuda": write auto, or a list of devices such as [cuda:0'),
        ("model.devices", [], "model.devices is []: write auto"),
        ("model.devices", ["cuda:0", 1], 'model.devices is ["cuda:0", 1]: write auto'),
        ("chunk.overlap_tokens", 200, "chunk.overlap_tokens (200) must be less than half of chunk.max_tokens (256)"),
        ("negatives.dense_range_min", 50, "negatives.dense_range_min (50) must be below negatives.dense_range_max"),
        ("negatives.bm25_max_ratio", 0, "negatives.bm25_max_ratio = 0 is out of range: set it to a number > 0"),
        ("bm25.b", float("nan"), "bm25.b = NaN is not a number"),
        ("evaluate.ks", [1, 0], "evaluate.ks[1] = 0 is out of range"),
        ("evaluate.plot_ks", [500, 1000], "evaluate.plot_ks ([500, 1000]) has no cutoff ≤ evaluate.candidate_k"),
        ("evaluate.out_of_domain", [{"name": "x", "ingst": "y"}], "evaluate.out_of_domain[0]: unknown key ingst"),
    ],
)
def test_bad_values_name_the_key_path_the_value_and_the_fix(path, value, expected):
    message = refusal(with_value(shipped(), path, value), path.split(".")[0])
    assert message.startswith("params.yaml ") and expected in message, message


@pytest.mark.parametrize(("typo", "meant"), [("min_char", "min_chars"), ("querys", "queries")])
def test_a_typo_is_refused_with_the_key_it_resembles(typo, meant):
    params = shipped()
    params["ingest"][typo] = params["ingest"].pop(meant)
    message = refusal(params, "ingest")
    assert f"ingest: unknown key {typo} (did you mean {meant}?)" in message
    assert f"ingest: missing key(s) {meant}" in message  # a renamed key is both, in one message


def test_valid_edge_values_pass():
    params = shipped()
    for path, value in [
        ("pairs.dev_ratio", 0.75),  # 0.75 + 0.25 = 1: every question drawn
        ("model.query_prompt", "query: "),
        ("model.revision", "main"),
        ("evaluate.out_of_domain", None),
        ("ingest.queries", None),
        ("ingest.min_chars", 0),
        ("negatives.bm25_max_ratio", "1e3"),  # YAML 1.1 reads 1e3 as a string; float() reads it as a number
    ]:
        name = path.split(".")[0]
        assert section(with_value(params, path, value), name)


def test_key_checks_a_key_of_another_stages_section():
    params = with_value(shipped(), "train_embedder.max_seq_length", "256 tokens")
    with pytest.raises(ParamsError, match=r"train_embedder.max_seq_length = \"256 tokens\" is not a number"):
        key(params, "train_embedder.max_seq_length")
    with pytest.raises(ParamsError, match=r"train_embedder\.max_seq_length: missing"):
        key(with_value(shipped(), "train_embedder.max_seq_length", DELETE), "train_embedder.max_seq_length")


# ---------------------------------------------------------------- ingest's own reader of the section


def test_load_config_checks_the_types_of_the_keys_it_is_given(tmp_path):
    (tmp_path / "docs").mkdir()
    base = {"root": ".", "documents": ["docs"]}
    with pytest.raises(IngestError, match=r"ingest.max_bad_fraction = -0.1 is out of range"):
        load_config({**base, "max_bad_fraction": -0.1}, repo=tmp_path)
    with pytest.raises(IngestError, match=r"ingest.min_chars = \[20\] is not a number"):
        load_config({**base, "min_chars": [20]}, repo=tmp_path)
    with pytest.raises(IngestError, match=r"ingest: unknown key querys \(did you mean queries\?\)"):
        load_config({**base, "querys": []}, repo=tmp_path)
    with pytest.raises(IngestError, match=r"ingest.documents\[0\]: unknown key pth \(did you mean path\?\)"):
        load_config({**base, "documents": [{"path": "docs", "pth": "x"}]}, repo=tmp_path)
    with pytest.raises(IngestError, match=r"ingest.documents\[0\].sheet = 2024 is not a text \(put it in quotes"):
        load_config({**base, "documents": [{"path": "docs", "sheet": 2024}]}, repo=tmp_path)
    with pytest.raises(IngestError, match=r"ingest.documents\[0\].path = \[\"docs\"\] is not a text"):
        load_config({**base, "documents": [{"path": ["docs"]}]}, repo=tmp_path)


# ---------------------------------------------------------------- a stage run with broken params


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: text.replace("  min_chars: 20", "\tmin_chars: 20"), "params.yaml:"),
        (lambda text: text.replace("  min_chars: 20", "  min_char: 20"), "did you mean min_chars?"),
        (lambda text: text.replace("  max_bad_fraction: 0.2", "  max_bad_fraction: -0.1"), "ingest.max_bad_fraction"),
    ],
)
def test_a_stage_with_broken_params_exits_1_with_one_line(tmp_path, edit, expected):
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    broken = edit(text)
    assert broken != text
    (tmp_path / "params.yaml").write_text(broken, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(REPO / "stages/ingest.py")], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert output.startswith("ingest failed: ") and expected in output, output
