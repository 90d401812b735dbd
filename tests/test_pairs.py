import numpy as np
import pytest

from ragtune.pairs import (
    align_positive_chunks,
    cap_synthetic,
    query_key,
    split_queries,
    synthetic_pairs,
    validate,
)


def make_queries(n):
    return [{"query_id": f"q{i:03d}", "query": f"câu hỏi số {i}", "positive_doc_ids": [f"d{i % 5}"]} for i in range(n)]


def test_split_is_seeded_complete_and_sized():
    qs = make_queries(100)
    a = split_queries(qs, 0.1, 0.2, seed=1)
    b = split_queries(qs, 0.1, 0.2, seed=1)
    c = split_queries(qs, 0.1, 0.2, seed=2)
    assert a == b and a != c
    assert (len(a["train"]), len(a["dev"]), len(a["test"])) == (70, 10, 20)
    ids = [q["query_id"] for s in a.values() for q in s]
    assert sorted(ids) == sorted(q["query_id"] for q in qs)


def test_same_question_text_never_crosses_splits():
    qs = make_queries(40)
    # the same question under different ids, with different case/punctuation
    qs += [{"query_id": f"dup{i}", "query": f"Câu hỏi  số {i}?", "positive_doc_ids": ["d0"]} for i in range(40)]
    for seed in range(5):
        s = split_queries(qs, 0.2, 0.3, seed=seed)
        where = {}
        for name, items in s.items():
            for q in items:
                where.setdefault(query_key(q["query"]), set()).add(name)
        assert all(len(v) == 1 for v in where.values())


def test_all_test_split_for_benchmarking():
    s = split_queries(make_queries(10), 0.0, 1.0, seed=0)
    assert len(s["test"]) == 10 and not s["train"] and not s["dev"]
    with pytest.raises(ValueError, match="test_ratio"):
        split_queries(make_queries(3), 0.5, 0.6, seed=0)


def test_alignment_picks_the_best_chunk_of_each_relevant_document():
    queries = [{"query_id": "q", "query": "x", "positive_doc_ids": ["a", "b"]}]
    chunk_ids = ["a#0", "a#1", "b#0"]
    by_doc = {"a": [0, 1], "b": [2]}
    bm25 = np.array([[0.1, 0.9, 0.5]])
    dense = np.array([[0.2, 0.8, 0.3]])
    aligned = align_positive_chunks(
        queries, by_doc, chunk_ids, [lambda qi, idx: bm25[qi, idx], lambda qi, idx: dense[qi, idx]]
    )
    assert aligned == [["a#1", "b#0"]]


DOCS = [
    {"doc_id": "law1@1", "title": "Phạm vi điều chỉnh"},
    {"doc_id": "law2@1", "title": "Phạm vi điều chỉnh"},
    {"doc_id": "pol", "title": "Chính sách nghỉ phép năm"},
]
LONG = (
    "Nhân viên chính thức được hưởng mười hai ngày nghỉ phép có lương mỗi năm làm việc. "
    "Số ngày phép tăng thêm một ngày sau mỗi năm năm thâm niên làm việc liên tục. "
    "Phép năm chưa dùng hết được chuyển sang quý một của năm kế tiếp rồi hết hiệu lực."
)
CHUNKS = [
    {
        "chunk_id": "law1@1#0000",
        "doc_id": "law1@1",
        "section": "",
        "text": "Luật này quy định về ma túy.",
        "n_tokens": 8,
    },
    {
        "chunk_id": "law2@1#0000",
        "doc_id": "law2@1",
        "section": "",
        "text": "Luật này quy định về cư trú.",
        "n_tokens": 8,
    },
    {"chunk_id": "pol#0000", "doc_id": "pol", "section": "Số ngày phép", "text": LONG, "n_tokens": 60},
]


def test_synthetic_pairs_drop_ambiguous_anchors_and_remove_ict_sentence():
    pairs, counts = synthetic_pairs(
        DOCS, CHUNKS, {"title": 1, "heading": 1, "ict": 2}, 100, seed=0, ict_keep_sentence=0
    )
    anchors = [p["query"] for p in pairs]
    assert "Phạm vi điều chỉnh" not in anchors  # shared by two laws: a false-negative factory
    assert counts["dropped_ambiguous_anchor"] == 2
    assert "Chính sách nghỉ phép năm" in anchors and "Số ngày phép" in anchors
    ict = [p for p in pairs if p["kind"] == "ict"]
    assert ict
    for p in ict:
        assert p["query"] not in p["positive_texts"][0]
        assert p["positive_doc_ids"] == ["pol"]
    again, _ = synthetic_pairs(DOCS, CHUNKS, {"title": 1, "heading": 1, "ict": 2}, 100, seed=0, ict_keep_sentence=0)
    assert again == pairs


def test_validate_reports_and_refuses_leakage():
    chunks = {c["chunk_id"]: c for c in CHUNKS}
    docs = {d["doc_id"]: {**d, "metadata": {"document_type": "Policy"}} for d in DOCS}
    q = {
        "query_id": "q1",
        "query": "được nghỉ mấy ngày",
        "positive_doc_ids": ["pol"],
        "positive_chunk_ids": ["pol#0000"],
    }
    splits = {"train": [q, dict(q, query_id="q1b")], "dev": [], "test": []}
    report = validate(splits, [], chunks, docs)
    assert report["train"]["duplicates"] == 1
    assert report["train"]["by_document_type"] == {"Policy": 2}
    leaky = {"train": [q], "dev": [], "test": [dict(q, query_id="t1", query="Được nghỉ mấy ngày?")]}
    with pytest.raises(AssertionError, match="held-out"):
        validate(leaky, [], chunks, docs)


def test_synthetic_pairs_auto_only_when_labels_are_scarce():
    from ragtune.pairs import use_synthetic

    assert use_synthetic("auto", 40, 100) and not use_synthetic("auto", 184, 100)
    assert use_synthetic(True, 1000, 100) and not use_synthetic(False, 0, 100)
    with pytest.raises(ValueError, match="auto"):
        use_synthetic("sometimes", 0, 100)


def test_title_pairs_are_not_a_copy_task():
    """A chunk starts with its title line; the title pair's positive must not contain that line."""
    chunk = {**CHUNKS[2], "text": "Chính sách nghỉ phép năm\n" + LONG}
    pairs, _ = synthetic_pairs(DOCS, [*CHUNKS[:2], chunk], {"title": 1}, 100, seed=0)
    (title,) = [p for p in pairs if p["kind"] == "title"]
    assert title["query"] == "Chính sách nghỉ phép năm"
    assert title["positive_texts"] == [LONG]
    assert title["positive_chunk_ids"] == ["pol#0000"]


def test_ict_sentences_come_from_the_body_not_the_title_prefix():
    chunk = {**CHUNKS[2], "text": "Chính sách nghỉ phép năm\nSố ngày phép\n" + LONG}
    pairs, _ = synthetic_pairs(DOCS, [*CHUNKS[:2], chunk], {"ict": 20}, 100, seed=0, ict_keep_sentence=0)
    assert pairs
    for p in pairs:
        assert "Chính sách" not in p["query"] and "\n" not in p["query"]
        assert p["query"] in LONG


def test_synthetic_pairs_are_capped_per_labeled_question():
    syn = [{"query": f"s{i}"} for i in range(50)]
    kept, dropped = cap_synthetic(syn, n_labeled=10, max_per_labeled=2, seed=0)
    assert (len(kept), dropped) == (20, 30)
    assert kept == cap_synthetic(syn, 10, 2, seed=0)[0]  # seeded
    assert all(k in syn for k in kept)
    assert cap_synthetic(syn, 0, 2, seed=0) == (syn, 0)  # no labels: synthetic pairs are all there is
    assert cap_synthetic(syn, 10, 0, seed=0) == (syn, 0)  # 0 = no cap
