"""benchmarks/make_corpus.py: a scale corpus that is the same bytes for the same seed, shaped like the 1.8M-document
legal corpus, with questions whose one answer document is known by construction."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import REPO, load_benchmark

from ragtune.io import read_jsonl, write_jsonl

mc = load_benchmark("make_corpus")


@pytest.fixture
def sources(tmp_path: Path) -> list[Path]:
    """Real Vietnamese sentences: the shipped sample's question texts (the documents need ingest to be read)."""
    texts = []
    for path in sorted((REPO / "data/sample/questions").glob("*.jsonl")):
        texts += [{"text": q["question"]} for q in read_jsonl(path)]
    out = tmp_path / "sources.jsonl"
    write_jsonl(out, texts)
    return [out]


def test_same_seed_same_bytes_another_seed_other_bytes(tmp_path: Path, sources: list[Path]) -> None:
    a = mc.make_corpus(3000, 0, sources, tmp_path / "a", questions=40)
    b = mc.make_corpus(3000, 0, sources, tmp_path / "b", questions=40)
    c = mc.make_corpus(3000, 1, sources, tmp_path / "c", questions=40)
    for name in ("corpus.jsonl", "questions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert a["outputs"][name] == b["outputs"][name] != c["outputs"][name]


def test_documents_are_legal_shaped_and_about_the_target_length(tmp_path: Path, sources: list[Path]) -> None:
    m = mc.make_corpus(6000, 3, sources, tmp_path, questions=0)
    docs = read_jsonl(tmp_path / "corpus.jsonl")
    assert len(docs) == 6000 == len({d["id"] for d in docs}) and m["questions"] == 0
    lengths = [len(d["text"]) for d in docs]
    assert m["chars"]["mean"] == pytest.approx(statistics.fmean(lengths), abs=0.1)
    assert 300 <= m["chars"]["mean"] <= 400  # the 1.8M-document corpus: 345 on average
    assert m["chars"]["p99"] > 3 * m["chars"]["p50"]  # a long tail
    for d in docs[:200]:
        head, *clauses = d["text"].split("\n")
        assert head.startswith("Điều ") and clauses and all(c.startswith(f"{k}. ") for k, c in enumerate(clauses, 1))
        assert d["title"].split()[0] in {k.split()[0] for k in mc.KINDS} and " số " in d["title"]


def test_each_question_has_exactly_one_document_holding_its_fact(tmp_path: Path, sources: list[Path]) -> None:
    mc.make_corpus(2000, 0, sources, tmp_path, questions=60)
    docs = {d["id"]: d["text"] for d in read_jsonl(tmp_path / "corpus.jsonl")}
    questions = read_jsonl(tmp_path / "questions.jsonl")
    assert len(questions) == 60 == len({q["id"] for q in questions}) == len({q["positive_ids"][0] for q in questions})
    planted = [
        line.split(". ", 1)[1]
        for text in docs.values()
        for line in text.split("\n")[1:]
        if any(e in line for e in mc.ENTITIES) and " ngày" in line and any(v in line for v in mc.EVENTS)
    ]
    assert len(planted) == 60 == len(set(planted))  # one fact per question, each in one document
    for q in questions:
        text = docs[q["positive_ids"][0]]
        entity = next(e for e in sorted(mc.ENTITIES, key=len, reverse=True) if e.lower() in q["query"].lower())
        duty = next(d for d in mc.DUTIES if d in q["query"])
        assert entity.lower() in text.lower() and duty in text
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"] == {str(sources[0]): mc.sha256(sources[0])}


def test_too_few_sentences_is_refused_with_the_fix(tmp_path: Path) -> None:
    src = tmp_path / "tiny.jsonl"
    write_jsonl(src, [{"text": "Một câu tiếng Việt đủ dài để dùng được."}])
    with pytest.raises(SystemExit, match=r"usable sentences .* give larger --sources"):
        mc.make_corpus(10, 0, [src], tmp_path / "out", questions=1)
