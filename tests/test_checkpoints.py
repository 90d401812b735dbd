"""Resuming after a kill: half-written checkpoints are named, removed, and the last complete one is resumed.

transformers writes ``checkpoint-N/`` in place and ``trainer_state.json`` last, so a run killed while saving leaves
a folder without it (or with it truncated); older versions staged the save as ``tmp-checkpoint-N``. The folders here
are faked: no training is needed to see what prepare_checkpoint_dir makes of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import make_stage_dir

from ragtune.io import read_json
from ragtune.paths import Paths
from ragtune.train.checkpoints import FINGERPRINT_FILE, ResumePoint, incomplete_checkpoints, prepare_checkpoint_dir

FP = "fingerprint-of-this-run"


def _checkpoint(root: Path, step: int, state: str | None = '{"global_step": 0}') -> Path:
    """A fake ``checkpoint-<step>``: weights, and ``trainer_state.json`` with ``state`` (None: not written yet)."""
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (ckpt / "trainer_state.json").write_text(state, encoding="utf-8")
    return ckpt


def _run_dir(tmp_path: Path) -> Path:
    """A checkpoint folder an earlier run of the same fingerprint left behind."""
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / FINGERPRINT_FILE).write_text(FP + "\n", encoding="utf-8")
    return root


def test_killed_while_saving_resumes_the_last_complete_checkpoint_and_removes_the_rest(tmp_path, capsys):
    root = _run_dir(tmp_path)
    _checkpoint(root, 5)
    _checkpoint(root, 10)
    _checkpoint(root, 15, state=None)  # killed before trainer_state.json
    _checkpoint(root, 20, state='{"global_step": 2')  # killed while writing it: truncated
    (root / "tmp-checkpoint-25").mkdir()  # an older transformers' staging folder
    (root / ".tmp-optimizer.pt").write_bytes(b"half")  # a temp file
    (root / "eval").mkdir()  # the evaluator's CSVs: not a checkpoint, left alone

    resume = prepare_checkpoint_dir(root, FP)

    assert resume.checkpoint == str(root / "checkpoint-10") and resume.step == 10
    assert resume.incomplete == [".tmp-optimizer.pt", "checkpoint-15", "checkpoint-20", "tmp-checkpoint-25"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10", "checkpoint-5", "eval", FINGERPRINT_FILE]
    err = " ".join(capsys.readouterr().err.split())
    assert "4 incomplete checkpoint(s)" in err and "checkpoint-15 (no trainer_state.json)" in err
    assert "Resuming from checkpoint-10" in err


def test_only_an_incomplete_checkpoint_means_step_0_and_says_so(tmp_path, capsys):
    root = _run_dir(tmp_path)
    _checkpoint(root, 40, state=None)
    resume = prepare_checkpoint_dir(root, FP)
    assert resume == ResumePoint(None, ["checkpoint-40"]) and resume.step == 0
    assert not (root / "checkpoint-40").exists()
    assert "Training from step 0" in " ".join(capsys.readouterr().err.split())


def test_a_truncated_trainer_state_is_never_handed_to_the_trainer(tmp_path):
    """Before: the newest checkpoint with a trainer_state.json was resumed, and a truncated one crashed the trainer
    (json.JSONDecodeError in TrainerState.load_from_json) with a raw traceback."""
    root = _run_dir(tmp_path)
    _checkpoint(root, 6)
    _checkpoint(root, 12, state='{"global_step": 1')
    _checkpoint(root, 18, state="[]")  # valid JSON, but not a trainer state
    assert incomplete_checkpoints(root) == {
        "checkpoint-12": "trainer_state.json unreadable: JSONDecodeError",
        "checkpoint-18": "trainer_state.json is not a JSON object",
    }
    assert prepare_checkpoint_dir(root, FP).checkpoint == str(root / "checkpoint-6")


def test_clean_folders_report_nothing(tmp_path, capsys):
    assert prepare_checkpoint_dir(tmp_path / "new", FP) == ResumePoint()
    root = _run_dir(tmp_path)
    _checkpoint(root, 3)
    assert prepare_checkpoint_dir(root, FP) == ResumePoint(str(root / "checkpoint-3"), [])
    assert capsys.readouterr().err == ""


def test_other_ranks_skip_incomplete_checkpoints_but_leave_removal_to_rank_0(tmp_path):
    root = _run_dir(tmp_path)
    _checkpoint(root, 4)
    _checkpoint(root, 8, state=None)
    assert prepare_checkpoint_dir(root, FP, owner=False) == ResumePoint(str(root / "checkpoint-4"))
    assert (root / "checkpoint-8").exists()


def test_a_changed_fingerprint_still_wipes_everything(tmp_path):
    root = _run_dir(tmp_path)
    _checkpoint(root, 5)
    _checkpoint(root, 10, state=None)
    assert prepare_checkpoint_dir(root, "another-run") == ResumePoint()
    assert sorted(p.name for p in root.iterdir()) == [FINGERPRINT_FILE]


@pytest.mark.parametrize("name", ["checkpoint-9.tmp", "checkpoint-best"])
def test_a_checkpoint_name_without_a_step_is_incomplete_not_a_crash(tmp_path, name):
    """``int(name.split("-")[-1])`` used to raise ValueError on such a folder if it held a trainer_state.json."""
    root = _run_dir(tmp_path)
    (root / name).mkdir()
    (root / name / "trainer_state.json").write_text("{}", encoding="utf-8")
    assert prepare_checkpoint_dir(root, FP) == ResumePoint(None, [name])


def test_the_train_stage_reports_incomplete_checkpoints_in_its_metrics(tmp_path, tiny_embedder_path, monkeypatch):
    """Through run_train_embedder on the tiny model: a killed run of the same params left an incomplete
    checkpoint; the stage trains from step 0, and metrics and the model card say what happened and which base."""
    from ragtune.train.embedder import run as embedder_run
    from ragtune.train.embedder.run import run_train_embedder

    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder={"max_steps": 2})
    paths = Paths(work)
    real = embedder_run.prepare_checkpoint_dir

    def after_a_kill(path, fingerprint, **kwargs):
        (Path(path) / FINGERPRINT_FILE).parent.mkdir(parents=True, exist_ok=True)
        (Path(path) / FINGERPRINT_FILE).write_text(fingerprint + "\n", encoding="utf-8")  # same params, data, code
        _checkpoint(Path(path), 1, state=None)
        return real(path, fingerprint, **kwargs)

    monkeypatch.setattr(embedder_run, "prepare_checkpoint_dir", after_a_kill)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))

    run_train_embedder(params["model"], params["train_embedder"], paths, bm25_p=params["bm25"])

    m = read_json(paths.metrics("train_embedder"))
    assert m["train"]["incomplete_checkpoints"] == ["checkpoint-1"] and m["train"]["resumed_from_step"] == 0
    assert m["effective"]["optimizer_steps"] == 2
    base = m["effective"]["base_model"]
    assert base["name"] == str(tiny_embedder_path) and base["revision"] is None and base["commit"] == "local"
    card = (paths.embedder / "README.md").read_text(encoding="utf-8")
    assert f"Base model: `{tiny_embedder_path}`, a local folder (fingerprint `{base['fingerprint']}`)." in card
