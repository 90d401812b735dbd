"""`dvc repro` with the questions stage on, against a real loopback LLM server, and no labeled question at all.

The label-free path end to end as a user runs it: DVC runs the stage scripts as subprocesses, which reach the
server on 127.0.0.1 through the openai client. The answer cache is a DVC ``persist`` output, so a repro that
re-runs the stage asks nothing again.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import write_params
from test_pipeline_e2e import reproduced

from ragtune.io import read_json, read_jsonl
from ragtune.questions.loopback import LoopbackLLM


def _answer(body: dict) -> str:
    """Two questions per chunk, built from the chunk's own heading and second line (never copying a long run)."""
    text = body["messages"][-1]["content"].split('"""')[1].strip()
    lines = [line.strip("# ").strip() for line in text.split("\n") if line.strip()]
    title, detail = lines[0], " ".join(lines[1].split()[:3]).lower() if len(lines) > 1 else "nội dung"
    questions = [
        {"kind": "factual", "question": f"{title} được quy định như thế nào?"},
        {"kind": "how_to", "question": f"Theo quy định, {detail} thì cần làm gì?"},
    ]
    return json.dumps({"questions": questions}, ensure_ascii=False)


@pytest.mark.slow
def test_label_free_repro_holds_out_chunks_and_asks_each_chunk_once(tiny_repo):
    work, params, run = tiny_repo
    with LoopbackLLM(_answer) as llm:
        params["ingest"]["queries"] = []
        params["questions"].update(
            generator="llm",
            base_url=llm.base_url,
            model="loopback",
            timeout_s=10,
            max_retries=1,
            per_chunk={"factual": 1, "how_to": 1, "yes_no": 0, "multi_sentence": 0},
            consistency={"retriever": "bm25", "top_k": 20},
        )
        write_params(work, params)
        out = run("repro", "pairs")
        assert reproduced(out) == {"ingest", "chunk", "bm25", "questions", "pairs"}, out
        assert re.search(r"\[questions\] read \d+ chunks \(\d+ asked, 0 cached\)", out), out
        chunks = read_jsonl(work / "data/chunks/chunks.jsonl")
        assert len(llm.requests) == len(chunks)
        questions = read_jsonl(work / "data/questions/questions.jsonl")
        assert questions and {q["chunk_id"] for q in questions} <= {c["chunk_id"] for c in chunks}
        metrics = read_json(work / "metrics/questions.json")
        assert metrics["asked"] == len(chunks) and metrics["questions"] == len(questions)
        lock = (work / "dvc.lock").read_text(encoding="utf-8")
        assert "data/questions/answers.jsonl" in lock

        # no labels: test (and dev) are the questions of held-out chunks, and nothing trains on those chunks
        test = read_jsonl(work / "data/pairs/test.jsonl")
        assert test and all(q["source"] == "llm" for q in test)
        assert read_json(work / "metrics/pairs.json")["test_source"] == "llm"
        held_out = {
            c
            for s in ("dev", "test")
            for q in read_jsonl(work / f"data/pairs/{s}.jsonl")
            for c in q["positive_chunk_ids"]
        }
        training = read_jsonl(work / "data/pairs/train.jsonl") + read_jsonl(work / "data/pairs/synthetic.jsonl")
        assert any(p["kind"] == "llm" for p in training)
        assert not held_out & {c for p in training for c in p["positive_chunk_ids"]}

        # a param outside the cache key re-runs the stage, which asks nothing; identical questions stop DVC there
        params["questions"]["concurrency"] = 1
        write_params(work, params)
        out = run("repro", "pairs")
        assert reproduced(out) == {"questions"}, out
        assert len(llm.requests) == len(chunks)
        assert read_jsonl(work / "data/questions/questions.jsonl") == questions

        # the rest of the DAG runs on them, and the report says plainly that its test questions are synthetic
        out = run("repro")
        assert reproduced(out) == {"negatives", "train_embedder", "index", "train_reranker", "evaluate"}, out
        assert len(llm.requests) == len(chunks)
    evaluate = read_json(work / "metrics/evaluate.json")
    assert evaluate["test_questions"] == {"labeled": 0, "llm": len(test)}
    report = (work / "reports/evaluation.md").read_text(encoding="utf-8")
    assert "LLM" in report.split("## test split")[0]
