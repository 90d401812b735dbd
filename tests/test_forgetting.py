"""The forgetting check: base vs shipped embedder on labeled sets outside the corpus, read as ingest reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TOPICS

from ragtune.errors import UserError
from ragtune.evaluation.forgetting import forgetting_report, load_set
from ragtune.evaluation.report import render_report
from ragtune.io import write_jsonl
from ragtune.retrieval import load_dense


def _ood_set(root: Path) -> Path:
    """A small labeled corpus in its own folder, plus its ingest file (CSV questions: any format ingest reads)."""
    data = root / "faq"
    write_jsonl(
        data / "docs.jsonl", [{"id": f"F{i}", "title": t, "text": f"{t}. {b}"} for i, (t, b) in enumerate(TOPICS)]
    )
    rows = ["ma,cau_hoi,tai_lieu"] + [f"q{i},{t} được quy định ra sao,F{i}" for i, (t, _) in enumerate(TOPICS)]
    (data / "questions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = {
        "root": "faq",
        "documents": [{"path": "docs.jsonl"}],
        "queries": [{"path": "questions.csv", "columns": {"id": "ma", "query": "cau_hoi", "positives": "tai_lieu"}}],
    }
    path = root / "faq-ingest.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def chunker(tiny_embedder_path: Path):
    from ragtune.chunking import build_chunker

    model_p = {"embedder": str(tiny_embedder_path), "max_seq_length": 128, "passage_prompt": "passage: "}
    return build_chunker(model_p, {"max_tokens": 48, "overlap_tokens": 8, "prepend_title": True})


def test_an_out_of_domain_set_is_scored_for_base_and_shipped(tmp_path: Path, tiny_embedder_path: Path, chunker):
    spec = {"name": "faq", "ingest": str(_ood_set(tmp_path))}
    data = load_set(spec, chunker, in_domain_root=tmp_path / "elsewhere")
    assert len(data.queries) == len(TOPICS) and {c["doc_id"] for c in data.chunks} == {f"F{i}" for i in range(8)}
    model = load_dense({"embedder": str(tiny_embedder_path), "max_seq_length": 128})
    report, warnings = forgetting_report([data], model, model)
    r = report["faq"]
    assert r["n_queries"] == 8 and r["change"] == 0.0 and r["base_ndcg@10"] == r["shipped_ndcg@10"] > 0
    assert not warnings
    # a drop larger than the threshold is a warning that names the set and the fix
    _, warnings = forgetting_report([data], model, model, max_drop=-0.5)
    assert len(warnings) == 1 and "'faq'" in warnings[0] and "merge_alpha" in warnings[0]
    text = render_report(
        {"test": {"n_queries": 1, "doc": {}, "chunk": {}}},
        [],
        system_for_errors="x",
        context={"n_documents": 1, "n_chunks": 1, "base_model": "m"},
        out_of_domain=report,
    )
    assert "## Forgetting check" in text and "| faq | 8 |" in text


def test_the_set_that_is_your_corpus_is_skipped_and_a_missing_file_is_a_clear_error(tmp_path: Path, chunker):
    path = _ood_set(tmp_path)
    skipped = load_set({"name": "faq", "ingest": str(path)}, chunker, in_domain_root=tmp_path / "faq")
    assert isinstance(skipped, str) and "in domain" in skipped
    report, _ = forgetting_report([skipped], None, None)
    assert report == {"faq": {"skipped": "the same folder as ingest.root, so it is in domain, not out of it"}}
    with pytest.raises(UserError, match=r"out_of_domain\[nope\].*not found"):  # one red line, no traceback
        load_set({"name": "nope", "ingest": str(tmp_path / "missing.yaml")}, chunker, in_domain_root=tmp_path)
    broken = tmp_path / "tab.yaml"
    broken.write_text("root: .\ndocuments:\n\t- path: docs\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"tab\.yaml:3.*spaces"):
        load_set({"name": "tab", "ingest": str(broken)}, chunker, in_domain_root=tmp_path)


def test_the_shipped_sample_ingest_file_reads_the_sample(tiny_embedder_path: Path, chunker):
    """evaluate.out_of_domain's default set is the shipped sample, through examples/sample-ingest.yaml."""
    repo = Path(__file__).resolve().parents[1]
    data = load_set({"name": "sample", "ingest": str(repo / "examples/sample-ingest.yaml")}, chunker, repo / "data/x")
    assert len(data.queries) > 250 and len({c["doc_id"] for c in data.chunks}) == 70
