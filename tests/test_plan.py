"""ragtune plan: the probe's pieces (the document cap, re-pointed questions, counting, the fit, the schedule's extra
steps) and, in the slow suite, the whole plan on a tiny project."""

import json
from pathlib import Path

import pytest
from conftest import shipped_params
from test_ingest_run import corpus, write

from ragtune.ingest import load_config
from ragtune.ingest.run import ingest
from ragtune.io import write_json, write_jsonl
from ragtune.plan import Line, Measure, Slice, _fit_stage, _schedule_s, count_rows, make_plan, repoint


def test_line_through_two_probes_reads_the_full_size():
    line = Line.fit(1000, 12.0, 10_000, 30.0)  # 2 ms a document on top of 10 s
    assert line.a == pytest.approx(10.0) and line.b == pytest.approx(0.002)
    assert line.at(100_000) == pytest.approx(210.0)


def test_line_stays_physical_when_the_probes_are_noisy():
    assert Line.fit(1000, 12.0, 10_000, 11.0) == Line(11.0, 0.0)  # less time for more data: noise, not a trend
    flat_start = Line.fit(1000, 1.0, 10_000, 30.0)  # would start below zero: proportional to the larger probe
    assert flat_start == Line(0.0, 0.003) and flat_start.at(20_000) == pytest.approx(60.0)
    assert Line.fit(5, 2.0, 5, 3.0) == Line(3.0, 0.0)


def test_repoint_keeps_every_question_and_points_the_positives_past_the_cut_inside_it():
    queries = [
        {"query_id": "a", "positive_doc_ids": ["D1"]},
        {"query_id": "b", "positive_doc_ids": ["D9", "D1"]},
        {"query_id": "c", "positive_doc_ids": ["X-77"]},
    ]
    out = repoint(queries, ["D0", "D1"])
    assert [q["query_id"] for q in out] == ["a", "b", "c"]
    assert out[0]["positive_doc_ids"] == ["D1"]
    assert all(set(q["positive_doc_ids"]) <= {"D0", "D1"} and q["positive_doc_ids"] for q in out)
    assert repoint(queries, ["D0", "D1"]) == out  # the same id always lands on the same document
    assert queries[1]["positive_doc_ids"] == ["D9", "D1"]  # the input is not touched
    # with a closest-document function: the stand-in it names (the hash only where it names none)
    by_text = repoint(
        [{"query_id": "d", "query": "nghỉ phép năm", "positive_doc_ids": ["D9"]}],
        ["D0", "D1"],
        closest=lambda q: "D0" if "phép" in q else None,
    )
    assert by_text[0]["positive_doc_ids"] == ["D0"]


def test_the_closest_stand_in_is_the_slice_document_bm25_ranks_first():
    from ragtune.plan import _closest_by_bm25

    closest = _closest_by_bm25(
        ["A", "B", "C"],
        ["Nghỉ phép năm mười bốn ngày", "Cài đặt VPN trên máy tính xách tay", "Đặt phòng họp trước một ngày"],
    )
    assert closest("cài đặt VPN thế nào") == "B" and closest("đặt phòng họp") == "C"
    assert closest("!!!") is None  # no BM25 token: the caller falls back to the hash


def test_ingest_with_max_documents_stops_reading_documents_and_keeps_every_question(tmp_path: Path):
    section = corpus(tmp_path)  # docs/ (POL-1, vpn), then quick.csv (QP-1; QP-2 repeats vpn's text)
    config = load_config(section, tmp_path)

    capped = ingest(config, max_documents=2)

    assert [d["doc_id"] for d in capped.documents] == ["POL-1", "vpn"]
    # q9 names QP-1, which lies past the cut: kept unchecked instead of quarantined as an unknown positive
    assert [q["query_id"] for q in capped.queries] == ["q0", "q1", "q2", "q3", "q9"]
    assert capped.queries[-1]["positive_doc_ids"] == ["QP-1", "vpn"]
    assert not [r for r in capped.quarantine if r["reason"] == "unknown_positive"]
    # without the cap an id that exists nowhere is still quarantined: the probe's leniency stays in the probe
    lines = (tmp_path / "src/questions.jsonl").read_text(encoding="utf-8")
    write(tmp_path / "src/questions.jsonl", lines + '{"id": "q10", "query": "Câu hỏi lạc?", "positives": ["NOPE"]}\n')
    full = ingest(config)
    assert [d["doc_id"] for d in full.documents] == ["POL-1", "vpn", "QP-1"]
    assert [r["reason"] for r in full.quarantine if r["kind"] == "query"].count("unknown_positive") == 1
    assert "q10" in [q["query_id"] for q in ingest(config, max_documents=1).queries]


def test_count_rows_counts_folder_files_and_table_rows_without_ingesting(tmp_path: Path):
    section = corpus(tmp_path)
    write_jsonl(tmp_path / "src/more.jsonl", [{"id": i, "text": f"văn bản số {i} đủ dài để giữ lại"} for i in range(7)])
    (tmp_path / "src/more.jsonl").write_text(
        (tmp_path / "src/more.jsonl").read_text(encoding="utf-8") + "\n\n", encoding="utf-8"
    )  # blank lines are no rows
    section["documents"].append("more.jsonl")
    assert count_rows(load_config(section, tmp_path)) == 2 + 2 + 7


def _probe_with_timing(tmp_path: Path, timing: dict, rows: int) -> Slice:
    """A probe slice whose train_embedder metrics say ``rows`` rows and ``timing``."""
    piece = Slice(40, tmp_path)
    write_json(piece.paths.metrics("train_embedder"), {"train": {"rows": rows, "timing": timing}})
    return piece


def test_schedule_prices_the_full_schedules_steps_checks_and_saves(tmp_path: Path):
    """184 rows at batch 16 are 12 steps an epoch; epochs auto reaches auto_min_steps 60 in 5 epochs = 60 steps,
    checked and saved every ceil(0.3 × 60) = 18 steps and at the last: 4 checks, 4 saves. The first step costs what
    the probe's first did, each other one the mean of the probe's later steps."""
    params = {"train_embedder": shipped_params("train_embedder")}
    timing = {"steps": 5, "first_step_s": 12.0, "step_s_mean": 10.0, "evals": 1, "eval_s_mean": 5.0, "saves": 1,
              "save_s_mean": 2.0}  # fmt: skip
    piece = _probe_with_timing(tmp_path, timing, rows=184)

    seconds, why = _schedule_s("train_embedder", params, piece, rows_scale=1.0)

    assert seconds == pytest.approx(12.0 + 59 * 10.0 + 4 * 5.0 + 4 * 2.0)
    assert why == "60 steps × 10.00 s (184 rows), 4 dev checks × 5.0 s"
    # twice the rows: 23 steps an epoch, 3 epochs = 69 steps; dev checks that encode a pool twice as large
    seconds2, _ = _schedule_s("train_embedder", params, piece, rows_scale=2.0, eval_scale=2.0)
    assert seconds2 == pytest.approx(12.0 + 68 * 10.0 + 4 * 10.0 + 4 * 2.0)


def test_schedule_is_zero_when_the_probe_trained_nothing(tmp_path: Path):
    piece = _probe_with_timing(tmp_path, {"steps": 0}, rows=0)
    params = {"train_embedder": shipped_params("train_embedder")}
    assert _schedule_s("train_embedder", params, piece, 1.0)[0] == 0.0


def test_a_stage_fit_leaves_out_what_is_priced_apart(tmp_path: Path):
    small, big = Slice(10, tmp_path / "s"), Slice(40, tmp_path / "b")
    small.measures["train_embedder"] = Measure(100.0, 900.0, 150.0)
    big.measures["train_embedder"] = Measure(200.0, 1200.0, 300.0)
    trained = {small.root: 10.0, big.root: 50.0}  # steps, checks and saves of each probe run
    est = _fit_stage("train_embedder", small, big, 10, 40, 100, "chunks", lambda piece: trained[piece.root])
    assert est.seconds == pytest.approx(70.0 + 2.0 * 100)  # through (10, 90) and (40, 150)
    assert est.peak_rss_mib == pytest.approx(800.0 + 10.0 * 100)
    assert est.basis == "70.0 s + 2e+03 ms × 100 chunks (probes at 10 and 40)"
    whole = _fit_stage("train_embedder", small, big, 10, 40, 40, "chunks", lambda piece: trained[piece.root])
    assert (whole.seconds, whole.basis) == (150.0, "measured on all 40 chunks")


@pytest.mark.slow
def test_plan_prices_every_stage_of_a_tiny_project_from_its_probes(tiny_repo):
    """The whole plan on the tiny corpus (8 documents): data probes on 1 and 4 documents, extrapolated to 8; model
    probes on 2 documents (1 step) and all 8 (2 steps), plus the configured schedules (12 embedder steps, 8 reranker
    steps)."""
    work, _, _ = tiny_repo
    plan = make_plan(work, work / "params.yaml", probe_docs=4, model_probe_docs=8, probe_steps=2, work=work / "probe")

    assert plan.documents == 8 and plan.rows_counted == 8
    stages = {s.stage: s for s in plan.stages}
    assert list(stages) == [
        "ingest", "chunk", "bm25", "questions", "pairs", "negatives",
        "train_embedder", "index", "train_reranker", "evaluate",
    ]  # fmt: skip
    assert all(s.seconds > 0 and s.peak_rss_mib > 0 for s in plan.stages)
    assert "probes at 1 and 4" in stages["chunk"].basis  # extrapolated, not measured whole
    assert stages["train_embedder"].basis.startswith("12 steps × ")  # max_steps 12 in the tiny params
    assert stages["train_reranker"].basis.startswith("8 steps × ")
    probe = work / "probe"
    emb = json.loads((probe / "model-big/metrics/train_embedder.json").read_text(encoding="utf-8"))
    assert emb["effective"]["optimizer_steps"] == 2 and emb["train"]["timing"]["steps"] == 2
    # the probe's questions: every labeled one, pointing inside the 4-document slice
    docs = {json.loads(line)["doc_id"] for line in (probe / "big/data/interim/documents.jsonl").open()}
    queries = [json.loads(line) for line in (probe / "big/data/interim/queries.jsonl").open()]
    assert len(docs) == 4 and len(queries) == 24
    assert all(set(q["positive_doc_ids"]) <= docs for q in queries)
    assert plan.total_s == pytest.approx(sum(s.seconds for s in plan.stages))
