"""The question generator against a real HTTP server on loopback that speaks POST /v1/chat/completions.

A real server (not a mocked client) is the point: the retries, timeouts and connection errors under test are the
``openai`` client's own, and only a socket exercises them. Every test is bounded to seconds (short timeouts, the
server's ``retry-after-ms`` makes the client's backoff short), and the server stops in the fixture's finalizer.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from ragtune.errors import UserError
from ragtune.io import dumps
from ragtune.pairs import query_key
from ragtune.questions import AnswerCache, ChatClient, GenerationConfig, generate, load_prompt
from ragtune.questions.filters import is_vietnamese
from ragtune.questions.loopback import LoopbackLLM

CHUNKS = [
    {
        "chunk_id": "leave#0000",
        "doc_id": "leave",
        "text": "Người lao động được nghỉ phép năm mười hai ngày làm việc. Đơn xin nghỉ phép phải nộp cho "
        "trưởng phòng trước ba ngày làm việc.",
    },
    {
        "chunk_id": "marriage#0000",
        "doc_id": "marriage",
        "text": "Hồ sơ đăng ký kết hôn gồm tờ khai và giấy xác nhận tình trạng hôn nhân. Ủy ban nhân dân cấp xã "
        "giải quyết trong năm ngày làm việc.",
    },
]
GOOD = {
    "leave": [
        {"kind": "factual", "question": "Mỗi năm nhân viên được nghỉ phép bao nhiêu ngày?"},
        {"kind": "yes_no", "question": "Có cần báo trưởng phòng trước khi nghỉ phép không?"},
    ],
    "marriage": [
        {"kind": "factual", "question": "Đăng ký kết hôn cần chuẩn bị giấy tờ gì?"},
        {"kind": "yes_no", "question": "Xã có giải quyết việc đăng ký kết hôn không?"},
    ],
}


def _default_answer(user: str) -> str:
    topic = "leave" if "nghỉ phép" in user else "marriage"
    return json.dumps({"questions": GOOD[topic]}, ensure_ascii=False)


@pytest.fixture
def llm():
    with LoopbackLLM(lambda body: _default_answer(body["messages"][-1]["content"])) as server:
        yield server


def _config(base_url: str, **overrides: Any) -> GenerationConfig:
    knobs = {
        "base_url": base_url,
        "model": "test-model",
        "api_key_env": "",
        "per_kind": {"factual": 1, "yes_no": 1},
        "concurrency": 2,
        "timeout_s": 5.0,
        "max_retries": 2,
    }
    return GenerationConfig(**{**knobs, **overrides})


def _run(llm: LoopbackLLM, tmp_path, chunks=CHUNKS, held_out=frozenset(), **overrides: Any):
    config = _config(llm.base_url, **overrides)
    cache = AnswerCache(tmp_path / "cache.jsonl")
    return generate(chunks, config, client=ChatClient(config), cache=cache, held_out=held_out, progress=False)


def _bytes(records: list[dict[str, Any]]) -> bytes:
    return "".join(dumps(r) + "\n" for r in records).encode()


def test_generates_questions_in_a_stable_order(llm, tmp_path):
    questions, quarantine, counts = _run(llm, tmp_path, price_per_1k_tokens=0.5)
    assert [q["query"] for q in questions] == [q["question"] for topic in ("leave", "marriage") for q in GOOD[topic]]
    assert [q["chunk_id"] for q in questions] == ["leave#0000"] * 2 + ["marriage#0000"] * 2
    assert quarantine == [] and counts["asked"] == 2 and counts["questions"] == 4
    assert counts["tokens"] == {"prompt_tokens": 200, "completion_tokens": 40}
    assert counts["estimated_cost"] == pytest.approx(0.12)
    prompt, sha = load_prompt()
    request = llm.requests[0]["body"]
    assert request["model"] == "test-model" and request["messages"][0]["content"] == prompt and len(sha) == 64
    assert "tiếng Việt" in prompt and '"questions"' in prompt


def test_second_run_asks_nothing_and_gives_the_same_bytes(llm, tmp_path):
    first = _run(llm, tmp_path)
    assert len(llm.requests) == 2
    second = _run(llm, tmp_path)
    assert len(llm.requests) == 2 and second[2]["asked"] == 0 and second[2]["cached"] == 2
    assert _bytes(first[0]) == _bytes(second[0]) and _bytes(first[1]) == _bytes(second[1])
    # a new chunk is the only thing asked; a changed param re-asks everything
    extra = {"chunk_id": "x#0000", "doc_id": "x", "text": "Nhân viên được nghỉ phép khi có con nhỏ dưới một tuổi."}
    assert _run(llm, tmp_path, chunks=[*CHUNKS, extra])[2]["asked"] == 1
    assert _run(llm, tmp_path, temperature=0.7)[2]["asked"] == 2


def test_truncated_last_cache_line_is_ignored_and_repaired(llm, tmp_path):
    _run(llm, tmp_path)
    path = tmp_path / "cache.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "abc", "text": "cut mid-wri')
    cache = AnswerCache(path)
    assert cache.dropped_partial_line and len(cache) == 2
    cache.put({"key": "new", "text": "{}"})
    assert len(AnswerCache(path)) == 3  # the repaired file parses whole


@pytest.mark.parametrize("status", [429, 500])
def test_rate_limit_and_server_error_are_retried(llm, tmp_path, status):
    llm.script = [("status", status)]
    _, _, counts = _run(llm, tmp_path, concurrency=1)
    assert len(llm.requests) == 3 and counts["questions"] == 4


def test_a_timeout_is_retried(llm, tmp_path):
    llm.script = [("sleep", 2.0)]
    start = time.monotonic()
    _, _, counts = _run(llm, tmp_path, concurrency=1, timeout_s=0.5, max_retries=1)
    assert counts["questions"] == 4 and len(llm.requests) == 3 and time.monotonic() - start < 10


def test_bad_answers_and_bad_questions_are_quarantined_with_their_reason(llm, tmp_path):
    llm.script = [
        ("content", '{"questions": [{"kind": "factual", "question": "Mỗi năm'),
        (
            "content",
            json.dumps(
                {
                    "questions": [
                        {"kind": "factual", "question": "How many working days does a marriage registration take?"},
                        {
                            "kind": "yes_no",
                            "question": "Hồ sơ đăng ký kết hôn gồm tờ khai và giấy xác nhận tình trạng hôn nhân phải không?",
                        },
                        {"kind": "factual", "question": "Kết hôn?"},
                        {"kind": "factual", "question": "Đăng ký kết hôn cần chuẩn bị giấy tờ gì?"},
                    ]
                },
                ensure_ascii=False,
            ),
        ),
    ]
    questions, quarantine, counts = _run(llm, tmp_path, concurrency=1)
    reasons = {(q["chunk_id"], q["reason"]) for q in quarantine}
    assert reasons == {
        ("leave#0000", "malformed_json"),
        ("marriage#0000", "not_vietnamese"),
        ("marriage#0000", "copied"),
        ("marriage#0000", "too_short"),
    }
    assert [q["query"] for q in questions] == ["Đăng ký kết hôn cần chuẩn bị giấy tờ gì?"]
    assert counts["quarantined"] == {
        "malformed_json": 1,
        "wrong_shape": 0,
        "too_short": 1,
        "too_long": 0,
        "not_vietnamese": 1,
        "copied": 1,
    }


def test_near_duplicates_and_held_out_questions_are_dropped(llm, tmp_path):
    near = [
        {"kind": "factual", "question": "Mỗi năm nhân viên được nghỉ phép bao nhiêu ngày?"},
        {"kind": "yes_no", "question": "Mỗi năm, nhân viên được nghỉ phép bao nhiêu ngày vậy?"},
        {"kind": "yes_no", "question": "Có cần báo trưởng phòng trước khi nghỉ phép không?"},
    ]
    across = [*GOOD["marriage"], {"kind": "factual", "question": "mỗi năm nhân viên được nghỉ phép bao nhiêu ngày"}]
    llm.script = [("content", json.dumps({"questions": q}, ensure_ascii=False)) for q in (near, across)]
    held_out = frozenset({query_key("Có cần báo trưởng phòng trước khi nghỉ phép KHÔNG")})
    questions, _, counts = _run(llm, tmp_path, concurrency=1, held_out=held_out)
    assert counts["dropped"] == {"duplicate": 2, "held_out": 1}
    assert [q["query"] for q in questions] == [
        "Mỗi năm nhân viên được nghỉ phép bao nhiêu ngày?",
        *[q["question"] for q in GOOD["marriage"]],
    ]


def test_a_missing_key_variable_fails_before_any_request(llm, monkeypatch):
    monkeypatch.delenv("RAGTUNE_TEST_LLM_KEY", raising=False)
    with pytest.raises(UserError, match="RAGTUNE_TEST_LLM_KEY"):
        ChatClient(_config(llm.base_url, api_key_env="RAGTUNE_TEST_LLM_KEY"))
    assert llm.requests == []


def test_the_key_is_sent_but_never_written(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGTUNE_TEST_LLM_KEY", "sk-secret-123")
    questions, quarantine, counts = _run(llm, tmp_path, api_key_env="RAGTUNE_TEST_LLM_KEY")
    assert llm.requests[0]["headers"]["authorization"] == "Bearer sk-secret-123"
    written = _bytes(questions) + _bytes(quarantine) + dumps(counts).encode() + (tmp_path / "cache.jsonl").read_bytes()
    assert b"sk-secret-123" not in written


def test_an_unreachable_endpoint_is_a_user_error_naming_it(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago and has nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    config = _config(url, max_retries=0, timeout_s=2.0)
    start = time.monotonic()
    with pytest.raises(UserError, match=f"127.0.0.1:{port}/v1.*cannot be reached"):
        generate(CHUNKS, config, client=ChatClient(config), cache=AnswerCache(tmp_path / "c.jsonl"), progress=False)
    assert time.monotonic() - start < 5


def test_language_check():
    assert is_vietnamese("Thời hạn nộp hồ sơ xin nghỉ phép là bao lâu?")
    assert not is_vietnamese("What is the deadline for the leave request?")
    assert not is_vietnamese("Quelle est la durée du préavis de départ?")
    assert not is_vietnamese("请问申请休假的期限是多久？")


def test_max_chunks_spreads_over_the_corpus_and_is_stable_when_documents_are_added():
    from ragtune.questions.generate import select_chunks

    chunks = [{"chunk_id": f"doc{d}#{i:04d}", "text": "x"} for d in range(20) for i in range(10)]
    picked = select_chunks(chunks, 40)
    assert len(picked) == 40 and picked == [c for c in chunks if c in picked]  # chunk order kept
    assert len({c["chunk_id"].split("#")[0] for c in picked}) >= 10  # not the first four documents
    more = chunks + [{"chunk_id": f"new{d}#0000", "text": "x"} for d in range(20)]
    again = select_chunks(more, 40)
    assert len({c["chunk_id"] for c in picked} & {c["chunk_id"] for c in again}) >= 30
    assert select_chunks(chunks, None) == chunks and select_chunks(chunks, 500) == chunks
