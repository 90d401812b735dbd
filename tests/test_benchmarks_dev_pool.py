"""benchmarks/dev_pool.py: which checkpoint each dev evaluator keeps, and the script end to end on the tiny stage."""

from __future__ import annotations

from conftest import load_benchmark, make_stage_dir

from ragtune.io import read_json


def _call(step: int, **ndcg: float) -> dict:
    return {
        "step": step,
        "scores": {ev: {"ndcg@10": v, "seconds": 2.0 if ev == "full" else 0.5} for ev, v in ndcg.items()},
    }


def test_each_evaluator_keeps_its_first_best_step_and_the_full_corpus_prices_the_choice():
    bench = load_benchmark("dev_pool")
    calls = [
        _call(-1, full=0.70, **{"pool@50": 0.72, "pool@5": 0.90}),  # before training: not a checkpoint
        _call(10, full=0.75, **{"pool@50": 0.76, "pool@5": 0.93}),
        _call(20, full=0.80, **{"pool@50": 0.81, "pool@5": 0.93}),  # pool@5 ties here: the first best stays
        _call(30, full=0.78, **{"pool@50": 0.81, "pool@5": 0.92}),
        _call(-1, full=0.79, **{"pool@50": 0.80, "pool@5": 0.90}),  # the merge check: unmerged …
        _call(-1, full=0.77, **{"pool@50": 0.80, "pool@5": 0.91}),  # … and merged
    ]
    assert bench.phase_names(calls) == ["before", "10", "20", "30", "unmerged", "merged"]

    got = bench.summarize(calls, "pool@50", merge_tolerance=0.005)

    ev = got["evaluators"]
    assert ev["full"]["chosen_step"] == "20" and ev["full"]["regret_full_ndcg@10"] == 0
    assert ev["pool@50"]["chosen_step"] == "20" and ev["pool@50"]["agrees_with_full"] is True
    assert ev["pool@50"]["used_by_stage"] and not ev["full"]["used_by_stage"]
    assert ev["pool@5"]["chosen_step"] == "10" and ev["pool@5"]["agrees_with_full"] is False
    assert ev["pool@5"]["full_ndcg@10_at_chosen_step"] == 0.75 and ev["pool@5"]["regret_full_ndcg@10"] == 0.05
    assert ev["full"]["merge_check"] == "undone" and ev["pool@50"]["merge_check"] == "kept"  # .79 > .77 + .005
    assert ev["pool@50"]["seconds_per_eval"] == 0.5 and ev["pool@50"]["speedup_vs_full"] == 4.0
    assert got["scorings"]["30"]["pool@5"] == {"ndcg@10": 0.92, "seconds": 0.5}


def test_the_script_runs_the_stage_once_and_scores_every_evaluator_at_every_scoring(
    tmp_path, tiny_embedder_path, monkeypatch
):
    bench = load_benchmark("dev_pool")
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder={"max_steps": 4, "eval_steps": 2})
    monkeypatch.chdir(work)
    out = tmp_path / "dev_pool.json"

    bench.main(["--k", "1", "--set", "train_embedder.dev_pool_k=3", "--out", str(out)])

    got = read_json(out)
    ev = got["evaluators"]
    assert set(ev) == {"full", "pool@1", "pool@3"} and ev["pool@3"]["used_by_stage"]
    assert ev["full"]["chunks"] == got["corpus_chunks"] == 8 and ev["pool@1"]["chunks"] < 8
    assert got["stage"]["pool_matches_this_script"] and got["stage"]["pool"]["chunks"] == ev["pool@3"]["chunks"]
    assert set(got["scorings"]) == {"before", "2", "4", "unmerged", "merged"}  # merge_alpha 0.5: checked on dev
    assert all(set(s) == set(ev) for s in got["scorings"].values())
    assert all(row["chosen_step"] in ("2", "4") and "agrees_with_full" in row for row in ev.values())
    assert not (work / "metrics").exists()  # the stage ran on a scratch copy: the folder's outputs are untouched
