"""benchmarks/label_free.py's pure parts: the command line refuses a mode without what it needs before any stage
runs, and each arm's params change only what the protocol says (labels never enter; the LLM arm alone asks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark

from ragtune.params import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def label_free():
    return load_benchmark("label_free")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--llm"], "--llm needs --base-url and --model"),
        (["--llm", "--base-url", "http://127.0.0.1:1/v1"], "--llm needs --base-url and --model"),
        (["--llm", "--model", "m"], "--llm needs --base-url and --model"),
        ([], "one of the arguments --self-supervised --llm is required"),
        (["--self-supervised", "--llm"], "not allowed with argument"),
        (["--self-supervised", "--base-url", "http://x/v1"], "only apply to --llm"),
        (["--self-supervised", "--max-steps", "0"], "--max-steps must be > 0"),
    ],
)
def test_bad_command_lines_are_refused_with_a_clear_message(label_free, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        label_free.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_arm_params_change_only_what_the_protocol_says(label_free):
    params = load_params(REPO_ROOT / "params.yaml")
    args = label_free.parse_args(
        ["--llm", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "K", "--max-steps", "7"]
    )
    ss, ss_changed = label_free.arm_params(params, args, label_free.ARM_SS)
    llm, _ = label_free.arm_params(params, args, label_free.ARM_LLM)
    assert ss["questions"]["generator"] == "none"
    assert llm["questions"] | {"generator": "none", "base_url": "", "model": "", "api_key_env": ""} == params[
        "questions"
    ] | {"generator": "none", "base_url": "", "model": "", "api_key_env": ""}
    assert (llm["questions"]["generator"], llm["questions"]["base_url"], llm["questions"]["api_key_env"]) == (
        "llm",
        "http://127.0.0.1:9/v1",
        "K",
    )
    for arm in (ss, llm):
        assert arm["pairs"]["synthetic"]["enabled"] is True
        assert arm["train_embedder"]["ship_unchecked"] is True  # no labeled dev: else the base ships untrained
        assert arm["train_embedder"]["max_steps"] == 7
        assert arm["ingest"] == params["ingest"] and arm["negatives"] == params["negatives"]
    assert ss_changed["train_embedder.max_steps"] == 7
    # the user's params are left as they were
    assert (
        params["pairs"]["synthetic"]["enabled"]
        == load_params(REPO_ROOT / "params.yaml")["pairs"]["synthetic"]["enabled"]
    )
    assert params["questions"]["generator"] == "none"


def test_ingest_root_is_made_absolute_relative_to_its_file(label_free, tmp_path):
    (tmp_path / "sets").mkdir()
    ingest_file = tmp_path / "sets" / "corpus.yaml"
    ingest_file.write_text("root: ../data\ndocuments:\n- path: docs\nqueries:\n- path: q.jsonl\n", encoding="utf-8")
    section = label_free.ingest_section({}, str(ingest_file))
    assert section["root"] == str((tmp_path / "data").resolve())
    assert section["queries"] == [{"path": "q.jsonl"}]
