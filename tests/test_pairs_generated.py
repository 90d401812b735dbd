"""LLM-generated questions in the pairs stage: the leak guard, synthetic held-out splits, their own cap, and no
training pair from a held-out chunk. questions.jsonl is written by hand; no LLM and no model is needed (every
relevant document has one chunk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import shipped_params

from ragtune.errors import UserError
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.pairs import query_key, validate
from ragtune.pairs.generated import held_out_size, mix_generated
from ragtune.pairs.run import run_pairs
from ragtune.paths import Paths

N_DOCS = 10
KINDS = ("factual", "how_to")
OUTPUTS = ("data/pairs/train.jsonl", "data/pairs/dev.jsonl", "data/pairs/test.jsonl", "data/pairs/synthetic.jsonl",
           "data/pairs/quarantine.jsonl")  # fmt: skip


def chunk_id(i: int) -> str:
    return f"d{i}#0000"


def corpus(root: Path, queries: list[dict[str, Any]]) -> None:
    """Ten one-chunk documents, each with a distinct title of several words (so title pairs exist)."""
    docs = [{"doc_id": f"d{i}", "title": f"Quy định số {i} về chế độ làm việc", "text": f"văn bản {i}",
             "source": "x", "metadata": {}} for i in range(N_DOCS)]  # fmt: skip
    chunks = [{"chunk_id": chunk_id(i), "doc_id": f"d{i}", "title": docs[i]["title"], "section": "",
               "text": f"{docs[i]['title']}\nNội dung văn bản số {i}.", "n_tokens": 9} for i in range(N_DOCS)]  # fmt: skip
    for q in queries:
        q.setdefault("metadata", {})
    write_jsonl(root / "data/interim/documents.jsonl", docs)
    write_jsonl(root / "data/interim/queries.jsonl", queries)
    write_jsonl(root / "data/chunks/chunks.jsonl", chunks)


def generated(chunks: range = range(N_DOCS)) -> list[dict[str, Any]]:
    """Two questions per chunk, one of each kind, with the questions stage's row shape."""
    return [
        {"question_id": f"llm:{chunk_id(i)}:{kind}:0", "query": f"Câu hỏi {kind} về văn bản {i} là gì?",
         "kind": kind, "chunk_id": chunk_id(i), "doc_id": f"d{i}"}
        for i in chunks
        for kind in KINDS
    ]  # fmt: skip


def labeled(prefix: str, n: int, split: str | None, doc: int = 0) -> list[dict[str, Any]]:
    return [{"query_id": f"{prefix}{i:03d}", "query": f"{prefix} nhãn câu {i}", "positive_doc_ids": [f"d{doc}"],
             "split": split} for i in range(n)]  # fmt: skip


def run(root: Path, *, synthetic: bool | str = False, **mix: Any) -> dict[str, str]:
    pairs = shipped_params("pairs", seed=0, dev_ratio=0.1, test_ratio=0.2)
    pairs["synthetic"] = {**pairs["synthetic"], "enabled": synthetic}
    pairs["generated"] = {**pairs["generated"], **mix}
    model = shipped_params("model", embedder="unused")  # every relevant document has one chunk: no model is loaded
    return run_pairs(pairs, model, shipped_params("bm25"), Paths(root))


def outputs(root: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: read_jsonl(root / f"data/pairs/{name}.jsonl") for name in ("train", "dev", "test", "synthetic")}


def test_with_no_labels_the_held_out_splits_are_the_questions_of_disjoint_held_out_chunks(tmp_path):
    corpus(tmp_path, [])
    write_jsonl(Paths(tmp_path).questions, generated())
    summary = run(tmp_path, synthetic=True)
    out = outputs(tmp_path)
    chunks_of = {s: {c for q in out[s] for c in q["positive_chunk_ids"]} for s in ("dev", "test")}
    # 10 chunks with questions: test round(0.2 × 10) = 2 chunks, dev round(0.1 × 10) = 1, disjoint
    assert (len(chunks_of["test"]), len(chunks_of["dev"])) == (2, 1)
    assert not chunks_of["test"] & chunks_of["dev"]
    for split in ("dev", "test"):
        assert len(out[split]) == 2 * len(chunks_of[split])  # every question of a held-out chunk
        for q in out[split]:
            assert (q["split"], q["source"]) == (split, "llm") and q["query_id"].startswith("llm:")
            assert q["positive_doc_ids"] == [q["positive_chunk_ids"][0].split("#")[0]]
    assert out["train"] == []
    # No training pair, generated or self-supervised (title), has a held-out chunk as its positive.
    held = chunks_of["dev"] | chunks_of["test"]
    assert all(not set(p["positive_chunk_ids"]) & held for p in out["synthetic"])
    llm = [p for p in out["synthetic"] if p["kind"] == "llm"]
    titles = [p for p in out["synthetic"] if p["kind"] == "title"]
    assert len(llm) == 2 * (N_DOCS - 3) and len(titles) == N_DOCS - 3  # no labels: no cap
    assert {p["question_kind"] for p in llm} == set(KINDS)
    assert set(llm[0]) == {"query_id", "query", "positive_doc_ids", "positive_chunk_ids", "kind", "question_kind"}

    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert (metrics["test_source"], metrics["dev_source"]) == ("llm", "llm")
    g = metrics["generated"]
    assert g["read"] == 2 * N_DOCS and g["train_kept"] == len(llm)
    assert g["held_out_chunks"] == {"dev": 1, "test": 2} and g["held_out_questions"] == {"dev": 2, "test": 4}
    assert g["dropped_self_supervised_from_held_out_chunks"] == 3
    assert metrics["test"]["pairs"] == 4 and metrics["synthetic"]["pairs"] == len(out["synthetic"])
    assert summary["wrote"] == (
        f"train 0 / dev 0 / test 0 labeled + {len(titles)} synthetic pairs + {len(llm)} generated pairs; "
        "test: 4 LLM-generated questions (synthetic); dev: 2 LLM-generated questions (synthetic)"
    )
    # seeded: the same draw again
    run(tmp_path, synthetic=True)
    assert outputs(tmp_path) == out


def test_labeled_held_out_splits_stay_and_the_leak_guard_drops_a_generated_copy(tmp_path):
    queries = labeled("tr", 10, "train") + labeled("te", 3, "test") + labeled("dv", 2, "dev")
    corpus(tmp_path, queries)
    copy = {**generated(range(1))[0], "question_id": "llm:copy", "query": "TE nhãn câu 1!", "chunk_id": chunk_id(5)}
    write_jsonl(Paths(tmp_path).questions, [*generated(), copy])
    run(tmp_path, max_per_labeled=0)
    out = outputs(tmp_path)
    assert [q["query_id"] for q in out["test"]] == ["te000", "te001", "te002"]
    assert all("source" not in q for s in ("train", "dev", "test") for q in out[s])  # labeled rows unchanged
    llm = [p for p in out["synthetic"] if p["kind"] == "llm"]
    assert len(llm) == 2 * N_DOCS and "llm:copy" not in {p["query_id"] for p in llm}  # no held-out chunk: all train
    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert (metrics["test_source"], metrics["dev_source"]) == ("labeled", "labeled")
    assert metrics["generated"]["dropped_equal_to_heldout_query"] == 1
    assert metrics["generated"]["held_out_chunks"] == {"dev": 0, "test": 0}


def test_only_the_empty_labeled_split_gets_synthetic_questions(tmp_path):
    # every labeled question is fixed to test and none to train: dev has nothing to be carved from
    corpus(tmp_path, labeled("te", 4, "test"))
    write_jsonl(Paths(tmp_path).questions, generated())
    summary = run(tmp_path)
    out = outputs(tmp_path)
    assert {q["query_id"] for q in out["test"]} == {f"te{i:03d}" for i in range(4)}
    assert out["dev"] and all(q["source"] == "llm" for q in out["dev"])
    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert (metrics["test_source"], metrics["dev_source"]) == ("labeled", "llm")
    assert summary["wrote"].endswith(f"; dev: {len(out['dev'])} LLM-generated questions (synthetic)")


def test_generated_pairs_have_their_own_seeded_cap_and_ignore_the_self_supervised_switch(tmp_path, monkeypatch):
    corpus(tmp_path, labeled("tr", 4, "train") + labeled("te", 2, "test") + labeled("dv", 2, "dev"))
    write_jsonl(Paths(tmp_path).questions, generated())
    warnings: list[str] = []
    monkeypatch.setattr("ragtune.pairs.generated.warn", warnings.append)
    run(tmp_path, synthetic=False, max_per_labeled=1.5)  # 4 labeled training questions → at most 6 of 20
    assert any("14 generated pairs were dropped" in w and "questions.max_chunks" in w for w in warnings)
    first = outputs(tmp_path)["synthetic"]
    assert len(first) == 6 and {p["kind"] for p in first} == {"llm"}
    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert metrics["generated"]["dropped_over_max_per_labeled"] == 14 and metrics["generated"]["train_kept"] == 6
    run(tmp_path, synthetic=False, max_per_labeled=1.5)
    assert outputs(tmp_path)["synthetic"] == first  # seeded


def test_an_empty_or_missing_questions_file_changes_nothing(tmp_path):
    queries = labeled("q", 20, None)
    outs = []
    for name, questions in (("missing", None), ("empty", [])):
        root = tmp_path / name
        corpus(root, [dict(q) for q in queries])
        if questions is not None:
            write_jsonl(Paths(root).questions, questions)
        summary = run(root, synthetic=True)
        outs.append(([(root / rel).read_bytes() for rel in OUTPUTS], summary))
        metrics = read_json(root / "metrics/pairs.json")
        assert metrics["generated"]["read"] == 0 and metrics["test_source"] == "labeled"
        assert "dropped_from_held_out_chunk" not in metrics["synthetic"]["by_kind_and_drops"]
    assert outs[0] == outs[1]
    assert "generated" not in outs[0][1]["wrote"] and "generated" not in outs[0][1]["read"]


def test_held_out_size():
    assert held_out_size(0.2, 300, 10) == 2
    assert held_out_size(0.01, 300, 10) == 1  # at least one chunk with two or more
    assert held_out_size(0.01, 300, 1) == 0 and held_out_size(0.6, 300, 1) == 1
    assert held_out_size(0.5, 3, 100) == 3  # pairs.generated.held_out_chunks caps it
    assert held_out_size(0.0, 300, 10) == 0 and held_out_size(0.2, 0, 10) == 0


NO_CAP = {"held_out_chunks": 100, "max_per_labeled": 0}


def test_a_held_out_question_equal_to_a_labeled_training_question_is_dropped():
    splits = {"train": [{"query": "Câu hỏi factual về văn bản 1 là gì", "positive_chunk_ids": ["other"]}],
              "dev": [], "test": []}  # fmt: skip
    chunk_docs = {chunk_id(i): f"d{i}" for i in range(N_DOCS)}
    params = {"seed": 0, "dev_ratio": 1.0, "test_ratio": 0.0, "generated": NO_CAP}  # every chunk is held out (dev)
    mixed = mix_generated(generated(), splits, chunk_docs, params)
    assert mixed.counts["dropped_heldout_equal_to_train_query"] == 1
    assert len(mixed.heldout["dev"]) == 2 * N_DOCS - 1 and mixed.train == []
    assert query_key(splits["train"][0]["query"]) not in {query_key(q["query"]) for q in mixed.heldout["dev"]}


def test_a_labeled_training_positive_is_never_a_held_out_chunk():
    splits = {"train": [{"query": "nhãn", "positive_chunk_ids": [chunk_id(i)]} for i in range(8)],
              "dev": [], "test": []}  # fmt: skip
    chunk_docs = {chunk_id(i): f"d{i}" for i in range(N_DOCS)}
    params = {"seed": 0, "dev_ratio": 0.5, "test_ratio": 0.5, "generated": NO_CAP}
    mixed = mix_generated(generated(), splits, chunk_docs, params)
    assert mixed.held_out_chunks == {chunk_id(8), chunk_id(9)}  # the only chunks no labeled question points to


def test_questions_about_an_unknown_chunk_are_a_clear_error(tmp_path):
    corpus(tmp_path, labeled("q", 5, None))
    write_jsonl(Paths(tmp_path).questions, [{**generated(range(1))[0], "chunk_id": "gone#0000"}])
    with pytest.raises(UserError, match=r"questions\.jsonl:1: chunk 'gone#0000'.*Re-run the questions stage"):
        run(tmp_path)


def test_validate_refuses_a_training_pair_whose_positive_is_a_held_out_chunk():
    chunks = {"c1": {"n_tokens": 5}, "c2": {"n_tokens": 5}}
    docs = {"d": {}}
    test = [{"query": "một câu hỏi", "positive_doc_ids": ["d"], "positive_chunk_ids": ["c1"], "source": "llm"}]
    ok = [{"query": "câu khác", "positive_doc_ids": ["d"], "positive_chunk_ids": ["c2"], "kind": "llm"}]
    validate({"train": [], "dev": [], "test": test}, ok, chunks, docs)  # accepted
    bad = [{**ok[0], "positive_chunk_ids": ["c1"]}]
    with pytest.raises(AssertionError, match="held-out chunks are positives of training pairs"):
        validate({"train": [], "dev": [], "test": test}, bad, chunks, docs)
    labeled_test = [{k: v for k, v in test[0].items() if k != "source"}]
    validate({"train": [], "dev": [], "test": labeled_test}, bad, chunks, docs)  # a labeled test's chunk may train
    with pytest.raises(AssertionError, match="held-out query texts also appear in training"):
        validate({"train": [], "dev": [], "test": test}, [{**ok[0], "query": "Một câu hỏi?"}], chunks, docs)
