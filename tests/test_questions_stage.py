"""The questions stage (run_questions) against a real loopback server: off by default, cached across runs, the
round-trip consistency filter, and the errors a user meets before any request is sent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TOPICS, shipped_params

from ragtune.errors import UserError
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.questions.consistency import own_chunk_ranks
from ragtune.questions.loopback import LoopbackLLM
from ragtune.questions.prompt import PROMPT_PATH
from ragtune.questions.run import run_questions

CHUNKS = [{"chunk_id": f"D{i}#0", "doc_id": f"D{i}", "text": f"{t}\n{b}"} for i, (t, b) in enumerate(TOPICS)]
# A question about the leave chunk that reads like the password chunk: the round-trip filter must catch it.
MISLEADING = "Mật khẩu cần đổi sau bao nhiêu ngày sử dụng?"


def _answer(body: dict) -> str:
    user = body["messages"][-1]["content"]
    title = next(t for t, _ in TOPICS if t in user)
    questions = [{"kind": "factual", "question": f"{title} được quy định như thế nào?"}]
    if title == "Nghỉ phép năm":
        questions.append({"kind": "how_to", "question": MISLEADING})
    return json.dumps({"questions": questions}, ensure_ascii=False)


@pytest.fixture
def llm():
    with LoopbackLLM(_answer) as server:
        yield server


def _params(base_url: str, **overrides) -> dict:
    knobs = {
        "generator": "llm",
        "base_url": base_url,
        "model": "test-model",
        "prompt_file": str(PROMPT_PATH),
        "concurrency": 2,
        "timeout_s": 5.0,
        "max_retries": 1,
        "per_chunk": {"factual": 1, "how_to": 1, "yes_no": 0, "multi_sentence": 0},
        "consistency": {"retriever": "bm25", "top_k": 1},
    }
    return shipped_params("questions", **{**knobs, **overrides})


def _stage(tmp_path: Path, questions_p: dict, model_p: dict | None = None) -> tuple[Paths, dict]:
    paths = Paths(tmp_path)
    if not paths.chunks.exists():
        write_jsonl(paths.chunks, CHUNKS)
    summary = run_questions(questions_p, model_p or shipped_params("model"), shipped_params("bm25"), paths)
    return paths, summary


def test_off_by_default_writes_empty_outputs_and_asks_nobody(tmp_path):
    paths, summary = _stage(tmp_path, shipped_params("questions"))
    assert shipped_params("questions")["generator"] == "none"
    assert read_jsonl(paths.questions) == [] and read_jsonl(paths.questions_quarantine) == []
    assert paths.answer_cache.exists() and read_json(paths.metrics("questions"))["generator"] == "none"
    assert "0 questions" in summary["wrote"]


def test_round_trip_filter_quarantines_a_question_that_leads_elsewhere(llm, tmp_path):
    paths, _ = _stage(tmp_path, _params(llm.base_url))
    kept = read_jsonl(paths.questions)
    assert len(kept) == len(TOPICS) and MISLEADING not in {q["query"] for q in kept}
    assert all(q["own_chunk_rank"] == 1 for q in kept)
    assert [q["chunk_id"] for q in kept] == [c["chunk_id"] for c in CHUNKS]
    quarantined = read_jsonl(paths.questions_quarantine)
    assert [(q["reason"], q["record"]["query"]) for q in quarantined] == [("not_round_trip", MISLEADING)]
    assert quarantined[0]["record"]["own_chunk_rank"] > 1
    metrics = read_json(paths.metrics("questions"))
    assert metrics["quarantined"]["not_round_trip"] == 1 and metrics["questions"] == len(TOPICS)
    assert metrics["consistency"]["checked"] == len(TOPICS) + 1
    assert metrics["by_kind"] == {"factual": len(TOPICS), "how_to": 0, "yes_no": 0, "multi_sentence": 0}


def test_off_keeps_every_question_and_a_looser_top_k_keeps_it_too(llm, tmp_path):
    off, _ = _stage(tmp_path / "off", _params(llm.base_url, consistency={"retriever": "none", "top_k": 1}))
    assert MISLEADING in {q["query"] for q in read_jsonl(off.questions)}
    loose, _ = _stage(tmp_path / "loose", _params(llm.base_url, consistency={"retriever": "bm25", "top_k": 8}))
    assert MISLEADING in {q["query"] for q in read_jsonl(loose.questions)}


def test_a_rerun_asks_nothing_and_writes_the_same_bytes(llm, tmp_path):
    paths, _ = _stage(tmp_path, _params(llm.base_url))
    first = paths.questions.read_bytes(), paths.questions_quarantine.read_bytes()
    asked = len(llm.requests)
    assert asked == len(TOPICS)
    _, summary = _stage(tmp_path, _params(llm.base_url, concurrency=1))  # concurrency is not in the cache key
    assert len(llm.requests) == asked and f"{len(TOPICS)} cached" in summary["read"]
    assert (paths.questions.read_bytes(), paths.questions_quarantine.read_bytes()) == first


def test_embedder_ranks_are_the_cosine_ranks_of_the_base_model(tiny_embedder_path):
    from sentence_transformers import SentenceTransformer

    model_p = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=64)
    questions = [{"query": t, "chunk_id": c["chunk_id"]} for (t, _), c in zip(TOPICS, CHUNKS, strict=True)]
    ranks = own_chunk_ranks(questions, CHUNKS, "embedder", model_p, {})
    model = SentenceTransformer(str(tiny_embedder_path))
    model.max_seq_length = 64  # as model_p says
    q = model.encode([t for t, _ in TOPICS], prompt="query: ", normalize_embeddings=True)
    p = model.encode([c["text"] for c in CHUNKS], prompt="passage: ", normalize_embeddings=True)
    sims = q @ p.T
    expected = [1 + int((sims[i] > sims[i, i]).sum()) for i in range(len(TOPICS))]
    assert ranks == expected and all(1 <= r <= len(CHUNKS) for r in ranks)
    assert np.isfinite(sims).all()


def test_missing_key_variable_and_missing_prompt_fail_before_any_request(llm, tmp_path, monkeypatch):
    monkeypatch.delenv("RAGTUNE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="RAGTUNE_TEST_NO_SUCH_KEY"):
        _stage(tmp_path, _params(llm.base_url, api_key_env="RAGTUNE_TEST_NO_SUCH_KEY"))
    with pytest.raises(UserError, match=r"questions\.prompt_file"):
        _stage(tmp_path, _params(llm.base_url, prompt_file=str(tmp_path / "nope.md")))
    assert llm.requests == [] and not Paths(tmp_path).questions.exists()
