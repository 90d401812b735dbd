"""benchmarks/cv_selection.py --pipeline: the fold layout that makes the served pipeline's score out of fold."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, load_benchmark


def test_every_question_is_tested_once_by_a_pipeline_that_neither_trained_nor_chose_on_it():
    cv = load_benchmark("cv_selection")
    pool = [{"query_id": f"q{i:02d}", "query": str(i)} for i in range(23)]
    layouts = cv.pipeline_splits(pool, 5, seed=0)
    assert len(layouts) == 5
    tested = [q["query_id"] for s in layouts for q in s["test"]]
    assert sorted(tested) == sorted(q["query_id"] for q in pool)  # each exactly once
    for i, s in enumerate(layouts):
        ids = {name: {q["query_id"] for q in s[name]} for name in ("train", "dev", "test")}
        assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
        assert ids["train"] | ids["dev"] | ids["test"] == {q["query_id"] for q in pool}
        assert ids["dev"] == {q["query_id"] for q in layouts[(i + 1) % 5]["test"]}  # the next fold chooses
    assert [q["query_id"] for q in cv.pipeline_splits(pool, 5, seed=0)[0]["test"]] == [
        q["query_id"] for q in layouts[0]["test"]
    ]  # seeded
    with pytest.raises(SystemExit, match="folds ≥ 3"):
        cv.pipeline_splits(pool, 2, seed=0)


def fake_evaluate(calls: list[str]):
    """A stand-in for run_evaluate that writes the two files a pipeline fold reads back and records its call."""
    from ragtune.io import write_json, write_jsonl

    def evaluate(*args):
        paths = args[-1]
        write_jsonl(paths.per_query_test, [{"query_id": "q0", "systems": {"ft_dense": {"ndcg@10": 1.0}}}])
        write_json(paths.pipeline, {"system": "ft_dense", "retriever": "ft_dense", "rerank": False})
        calls.append("evaluate")
        return {}

    return evaluate


def test_kept_folds_reuse_their_training_only_for_the_same_params_and_splits(tmp_path, monkeypatch):
    """--keep: a second run on a kept fold re-runs only evaluate; other params or other splits retrain."""
    from ragtune.paths import Paths

    cv = load_benchmark("cv_selection")
    calls = []

    evaluate = fake_evaluate(calls)

    monkeypatch.setattr(cv, "copy_inputs", lambda *a: None)
    monkeypatch.setattr(cv, "train_embedder", lambda *a, **k: calls.append("train_embedder"))
    monkeypatch.setattr(cv, "run_train_reranker", lambda *a: calls.append("train_reranker") or {})
    monkeypatch.setattr(cv, "run_evaluate", evaluate)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    other = {**params, "train_reranker": {**params["train_reranker"], "seed": 7}}
    pool = [{"query_id": f"q{i}", "query": str(i)} for i in range(6)]
    splits = cv.pipeline_splits(pool, 3, seed=0)[0]
    work = tmp_path / "fold0"
    Paths(work).per_query_test.parent.mkdir(parents=True, exist_ok=True)

    _, _, timing = cv.run_pipeline_fold(params, splits, work)
    assert calls == ["train_embedder", "train_reranker", "evaluate"] and not timing["reused_training"]
    calls.clear()
    _, _, timing = cv.run_pipeline_fold(params, splits, work)
    assert calls == ["evaluate"] and timing["reused_training"]
    calls.clear()
    cv.run_pipeline_fold(other, splits, work)
    assert calls == ["train_embedder", "train_reranker", "evaluate"]
    calls.clear()
    cv.run_pipeline_fold(other, cv.pipeline_splits(pool, 3, seed=1)[0], work)
    assert calls[0] == "train_embedder"


def test_embedders_from_retrains_only_the_reranker_on_a_fold_with_the_same_embedder(tmp_path, monkeypatch):
    """--embedders-from: a fold whose data and embedder were made with the same params and splits is copied without
    its reranker, and only train_reranker and evaluate run; another embedder setting trains the whole chain."""
    from ragtune.paths import Paths

    cv = load_benchmark("cv_selection")
    calls = []

    evaluate = fake_evaluate(calls)

    def train_reranker(model_p, section, paths):
        assert not paths.reranker.exists()  # the source fold's reranker was not copied
        assert (paths.embedder / "weights").read_text() == "fold embedder"  # its embedder was
        calls.append("train_reranker")
        return {}

    def train_embedder(params, paths, negatives):
        (paths.embedder).mkdir(parents=True, exist_ok=True)
        (paths.embedder / "weights").write_text("fold embedder")
        (paths.reranker).mkdir(parents=True, exist_ok=True)
        calls.append("train_embedder")

    monkeypatch.setattr(cv, "copy_inputs", lambda *a: None)
    monkeypatch.setattr(cv, "train_embedder", train_embedder)
    monkeypatch.setattr(cv, "run_train_reranker", lambda *a: {})
    monkeypatch.setattr(cv, "run_evaluate", evaluate)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    pool = [{"query_id": f"q{i}", "query": str(i)} for i in range(6)]
    splits = cv.pipeline_splits(pool, 3, seed=0)[0]
    source, work = tmp_path / "a" / "fold0", tmp_path / "b" / "fold0"
    Paths(source).per_query_test.parent.mkdir(parents=True, exist_ok=True)
    cv.run_pipeline_fold(params, splits, source)
    calls.clear()
    monkeypatch.setattr(cv, "run_train_reranker", train_reranker)

    other_reranker = {**params, "train_reranker": {**params["train_reranker"], "batch_size": 4}}
    _, _, timing = cv.run_pipeline_fold(other_reranker, splits, work, source)
    assert calls == ["train_reranker", "evaluate"] and not timing["reused_training"]
    calls.clear()
    _, _, timing = cv.run_pipeline_fold(other_reranker, splits, work, source)  # kept: evaluate only
    assert calls == ["evaluate"] and timing["reused_training"]
    calls.clear()
    monkeypatch.setattr(cv, "run_train_reranker", lambda *a: calls.append("train_reranker") or {})
    other_embedder = {**other_reranker, "train_embedder": {**params["train_embedder"], "lr": 1e-4}}
    cv.run_pipeline_fold(other_embedder, splits, work, source)
    assert calls == ["train_embedder", "train_reranker", "evaluate"]
    with pytest.raises(SystemExit, match="is the --keep folder"):
        cv.reuse_embedder(work, work, cv._training_key(params, splits))


def test_compare_pairs_two_pipeline_files_system_by_system(tmp_path, capsys):
    """--compare reads two --pipeline files (systems, no shipping policy): B's gain over A per shared system."""
    import json

    cv = load_benchmark("cv_selection")
    a = {"overrides": [], "per_query": {"served": {"q1": 0.5, "q2": 1.0}, "ft_dense": {"q1": 0.5, "q2": 0.5}}}
    b = {"overrides": ["x=1"], "per_query": {"served": {"q1": 1.0, "q2": 1.0}, "ft_dense": {"q1": 0.5, "q2": 0.5}}}
    paths = []
    for name, data in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data), encoding="utf-8")
    cv.compare(str(paths[0]), str(paths[1]))
    rows = json.loads(capsys.readouterr().out)["B_minus_A"]
    assert set(rows) == {"served vs served", "ft_dense vs ft_dense"}
    assert rows["served vs served"]["gain"] == pytest.approx(0.25)
    assert rows["ft_dense vs ft_dense"]["gain"] == 0.0
