"""benchmarks/cv_selection.py --pipeline: the fold layout that makes the served pipeline's score out of fold."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


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
