"""Access levels and metadata filters in search and the CLI (serve: tests/test_serve.py).

The headline property: for every level and every pipeline, a caller at that level gets exactly (ids, order, scores)
what an index built from only the documents at or below it returns, so a document above the caller's level cannot
even shift the ranks of what the caller sees.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import LEVELED_DOCS, LEVELED_METADATA, LEVELED_RANK, shipped_params, write_serving_models

from ragtune.access import AccessError, AccessScale, FilterError, fold, parse_filters
from ragtune.retrieval import build_bm25, top_k
from ragtune.search import Pipeline, Searcher

LEVELS = ["public", "internal", "confidential", "restricted"]  # the shipped scale
PIPELINES = [r + s for r in ("ft_dense", "bm25", "ft_hybrid", "ft_convex") for s in ("", "+rerank")]
QUERIES = ["báo cáo sự cố mật khẩu bị lộ", "lương thưởng ban giám đốc", "nhân viên làm việc từ xa VPN", "!!!"]
CANDIDATE_K = 3  # below the corpus size, so candidate depth truncates; k = 8 asks for more than any level holds


def _searchers(root: Path, reranker_dir: Path) -> dict[str, Searcher]:
    """One loaded index, one Searcher per pipeline (sharing the index, models and per-level BM25)."""
    base = Searcher.load(root / "models/index", Pipeline.load(root / "models/pipeline.json"), reranker_dir=reranker_dir)
    return {
        name: dataclasses.replace(
            base, pipeline=Pipeline.parse(name, base.pipeline), reranker=base.reranker if "+" in name else None
        )
        for name in PIPELINES
    }


@pytest.fixture(scope="module")
def leveled(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_path: Path) -> Path:
    root = tmp_path_factory.mktemp("leveled")
    return write_serving_models(
        root, tiny_embedder_path, LEVELED_DOCS, candidate_k=CANDIDATE_K, metadata=LEVELED_METADATA
    )


@pytest.fixture(scope="module")
def full(leveled: Path) -> dict[str, Searcher]:
    return _searchers(leveled, leveled / "models/reranker")


@pytest.fixture(scope="module")
def smaller(
    tmp_path_factory: pytest.TempPathFactory, tiny_embedder_path: Path, leveled: Path
) -> dict[str, dict[str, Searcher]]:
    """Per level: an index built from only the documents at or below it, served with the same reranker."""
    out = {}
    for rank, level in enumerate(LEVELS):
        docs = {d: v for d, v in LEVELED_DOCS.items() if LEVELED_RANK[d] <= rank}
        root = write_serving_models(
            tmp_path_factory.mktemp(f"only-{level}"),
            tiny_embedder_path,
            docs,
            candidate_k=CANDIDATE_K,
            metadata=LEVELED_METADATA,
        )
        out[level] = _searchers(root, leveled / "models/reranker")
    return out


def _docs(hits: list[dict]) -> list[str]:
    return [h["doc_id"] for h in hits]


# ------------------------------------------------------------------------------------------------ the scale
def test_levels_match_case_space_and_tone_insensitively_and_none_is_the_lowest():
    scale = AccessScale.from_params(shipped_params("access"))
    assert scale.rank(None) == 0 and scale.lowest == "public"  # fail closed
    assert [scale.rank(x) for x in ("PUBLIC", " internal ", "Confidential", "restricted")] == [0, 1, 2, 3]
    assert [scale.name(x) for x in (None, " Internal ", "RESTRICTED")] == ["public", "internal", "restricted"]
    assert fold("  Hoà   Giải ") == fold("hòa giải")  # one tone placement, as ingest writes one
    with pytest.raises(AccessError, match=r"unknown access level 'secret': use one of public, internal, confidential"):
        scale.rank("secret")


@pytest.mark.parametrize(
    ("levels", "unlabeled", "message"),
    [
        (["public", "internal"], "restricted", "access.unlabeled = 'restricted' is not on the scale: set it to one of"),
        (["public", "Internal", "internal "], "public", "access.levels lists 'internal ' twice"),
        ([], "public", "access.levels is empty"),
    ],
)
def test_a_scale_that_cannot_work_is_refused_naming_the_key(levels, unlabeled, message):
    with pytest.raises(AccessError, match=message):
        AccessScale.from_params({"levels": levels, "unlabeled": unlabeled})


def test_off_scale_labels_are_all_reported_with_the_fix():
    scale = AccessScale.from_params(shipped_params("access"))
    docs = [{"doc_id": f"D{i}", "metadata": {"access_level": "secret"}} for i in range(7)]
    docs += [{"doc_id": "ok", "metadata": {"access_level": "Public"}}, {"doc_id": "none"}]
    with pytest.raises(AccessError) as err:
        scale.document_ranks(docs)
    message = str(err.value)
    assert message.startswith("document D0 has access_level 'secret'; document D1 has")
    assert "(and 2 more documents)" in message and "Add 'secret' to access.levels" in message
    assert scale.document_ranks(docs[7:]) == ({"ok": 0, "none": 0}, 1)


@pytest.mark.parametrize(
    ("filters", "field", "reason"),
    [
        ({"color": "red"}, "color", "unknown filter field; filter on one of doc_id, department, document_type, tags"),
        ({"access_level": "internal"}, "access_level", "the caller's level is the access_level field, not a filter"),
        ({"tags": 3}, "tags", "must be a text or a non-empty list of texts"),
        ({"tags": []}, "tags", "must be a text or a non-empty list of texts"),
        ({"department": ["HR", 1]}, "department", "must be a text or a non-empty list of texts"),
        ({"department": " "}, "department", "has an empty value"),
        (["department"], "", "must be an object of field: value"),
    ],
)
def test_a_bad_filter_names_the_field(filters, field, reason):
    with pytest.raises(FilterError) as err:
        parse_filters(filters)
    assert err.value.field == field and reason in err.value.reason


# ------------------------------------------------------------------------------------------------ levels
@pytest.mark.parametrize("name", PIPELINES)
def test_a_level_is_answered_as_an_index_of_only_its_documents(name: str, full, smaller):
    """ids, order and every score equal those of the smaller index: what is above a caller's level is invisible to
    dense scores, BM25 statistics, fusion and the reranker alike. Fewer than k results when fewer are allowed."""
    for rank, level in enumerate(LEVELS):
        allowed = {d for d, r in LEVELED_RANK.items() if r <= rank}
        for query in QUERIES:
            for k in (CANDIDATE_K, 8):
                got = full[name].search(query, k=k, access_level=level)
                assert got == smaller[level][name].search(query, k=k, access_level=level), (level, query, k)
                assert set(_docs(got)) <= allowed
                assert len(got) == min(k, len(allowed))  # every allowed chunk is reachable at k = 8; no padding
    # not vacuous: the restricted documents are found by a caller who may see them
    assert {"SEC-1", "HR-3"} <= set(_docs(full[name].search(QUERIES[0], k=8, access_level="restricted")))


def test_no_level_is_the_lowest(full):
    for name in PIPELINES:
        for query in QUERIES[:2]:
            default = full[name].search(query, k=8)
            assert default == full[name].search(query, k=8, access_level=" PUBLIC ")
            assert set(_docs(default)) == {"HR-1", "HR-2"}


def test_bm25_statistics_are_per_level(full):
    """Why one BM25 per level: the public chunks score differently under the whole corpus's IDF and lengths, so a
    mask over one corpus-wide BM25 would let restricted documents move the public caller's ranking."""
    s = full["bm25"]
    query = "nhân viên làm việc từ xa"
    n_public = s.visible[0]
    corpus_wide = s.bm25_at(len(s.chunks)).scores(query)[:n_public]
    own = s.bm25_at(n_public).scores(query)
    assert n_public == 2 and not np.allclose(corpus_wide, own)
    assert s.search(query, k=2)[0]["scores"]["retriever"] == pytest.approx(float(own.max()), abs=1e-6)
    assert set(s.bm25_cache) <= {2, 4, 6, 8}  # one per level, shared by every pipeline over this index


def test_unlabeled_documents_get_access_unlabeled(tmp_path: Path, tiny_embedder_path: Path):
    access = {"levels": LEVELS, "unlabeled": "Internal"}
    root = write_serving_models(
        tmp_path, tiny_embedder_path, LEVELED_DOCS, candidate_k=8, metadata=LEVELED_METADATA, access=access
    )
    s = Searcher.load(root / "models/index", Pipeline("ft_hybrid", candidate_k=8))
    assert _docs(s.search("làm việc từ xa", k=8)) == ["HR-1"]  # HR-2 has no label: internal here
    assert set(_docs(s.search("làm việc từ xa", k=8, access_level="internal"))) == {"HR-1", "HR-2", "IT-1", "IT-2"}


def test_an_unlabeled_corpus_is_searched_as_before(tmp_path: Path, tiny_embedder_path: Path):
    """No labels: every document at access.unlabeled, every caller sees all of them (the default too), one BM25 over
    the whole corpus, and the scores are those of dense and BM25 over every chunk, as before levels existed."""
    docs = {d: LEVELED_DOCS[d] for d in ("HR-1", "IT-1", "SEC-1", "IT-2", "HR-3")}
    root = write_serving_models(tmp_path, tiny_embedder_path, docs, candidate_k=8)
    searchers = _searchers(root, root / "models/reranker")
    chunks = [c["chunk_id"] for c in searchers["bm25"].chunks]
    assert chunks == [f"{d}#0000" for d in docs]  # the chunks' own order
    for name, s in searchers.items():
        for query in QUERIES:
            default = s.search(query, k=8)
            assert len(default) == len(docs)
            assert all(s.search(query, k=8, access_level=level) == default for level in LEVELS), (name, query)
    s = searchers["bm25"]
    assert set(s.bm25_cache) == {len(docs)}
    query = QUERIES[2]
    reference = top_k(chunks, build_bm25(s.chunks, s.bm25_params).scores(query), 8)
    assert [(h["chunk_id"], h["scores"]["retriever"]) for h in s.search(query, k=8)] == reference
    dense = searchers["ft_dense"]
    vec = dense.embedder.encode([query], prompt=dense.query_prompt, normalize_embeddings=True, convert_to_numpy=True)
    reference = top_k(chunks, dense.dense.similarities(vec)[0], 8)
    assert [(h["chunk_id"], h["scores"]["retriever"]) for h in dense.search(query, k=8)] == reference


# ------------------------------------------------------------------------------------------------ filters
@pytest.mark.parametrize(
    ("filters", "level", "expected"),
    [
        ({"department": ["hr", " IT "]}, "restricted", {"HR-1", "HR-2", "HR-3", "IT-1", "IT-2", "IT-3"}),  # any-of
        ({"tags": "TỪ XA"}, "internal", {"HR-2", "IT-2"}),  # tags overlap
        ({"tags": "từ xa"}, None, {"HR-2"}),  # combined with the (default) level
        ({"tags": ["lương", "sự cố"]}, "confidential", set()),  # fewer than k: nothing is padded in
        ({"tags": ["lương", "sự cố"]}, "restricted", {"SEC-1", "HR-3"}),
        ({"document_type": "policy", "department": "HR"}, "restricted", {"HR-1", "HR-2", "HR-3"}),  # all fields
        ({"document_type": "policy", "department": "HR"}, "public", {"HR-1", "HR-2"}),
        ({"doc_id": "IT-1"}, "public", set()),
        ({"doc_id": "IT-1"}, "internal", {"IT-1"}),
        ({"doc_id": "it-1"}, "restricted", set()),  # an id matches exactly
    ],
)
def test_filters(full, filters, level, expected):
    for name in ("ft_hybrid+rerank", "bm25", "ft_convex"):
        assert set(_docs(full[name].search(QUERIES[1], k=8, access_level=level, filters=filters))) == expected


@pytest.mark.parametrize("name", ["ft_dense", "bm25"])
def test_a_filter_masks_without_changing_scores(full, name: str):
    """A filter is not a permission: it keeps the level's statistics, so the filtered results are the unfiltered
    ones that match, in the same order with the same scores."""
    s = full[name]
    for query in QUERIES[:3]:
        every = s.search(query, k=8, access_level="restricted")
        kept = s.search(query, k=8, access_level="restricted", filters={"tags": ["nhân sự", "bảo mật"]})
        match = [h for h in every if {"nhân sự", "bảo mật"} & set(h["metadata"].get("tags", []))]
        assert len(kept) == 5 and [(h["chunk_id"], h["scores"]) for h in kept] == [
            (h["chunk_id"], h["scores"]) for h in match
        ]


def test_search_refuses_an_unknown_level_or_filter(full):
    with pytest.raises(AccessError, match="unknown access level 'admin'"):
        full["ft_dense"].search("q", access_level="admin")
    with pytest.raises(FilterError, match=r"filters\.author: unknown filter field"):
        full["ft_dense"].search("q", filters={"author": "x"})


# ------------------------------------------------------------------------------------------------ CLI
def _cli_json(capsys, *args: str) -> dict:
    from ragtune.cli import main

    assert main(["search", *args, "--json", "--k", "8"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", PIPELINES)
def test_cli_serves_the_lowest_level_by_default_and_the_level_asked(leveled: Path, full, name: str, capsys):
    query = QUERIES[0]
    out = _cli_json(capsys, query, "--root", str(leveled), "--pipeline", name)
    assert out["access_level"] == "public" and set(_docs(out["results"])) == {"HR-1", "HR-2"}
    out = _cli_json(capsys, query, "--root", str(leveled), "--pipeline", name, "--access-level", "Internal")
    assert out["access_level"] == "internal"
    assert out["results"] == json.loads(json.dumps(full[name].search(query, k=8, access_level="internal")))


def test_cli_filters_and_errors(leveled: Path, capsys):
    from ragtune.cli import main

    root = ["--root", str(leveled)]
    out = _cli_json(capsys, "mật khẩu", *root, "--access-level", "restricted", "--filter", "tags=bảo mật",
                    "--filter", "tags=vpn", "--filter", "department=IT")  # fmt: skip
    assert set(_docs(out["results"])) == {"IT-1", "IT-2"} and out["filters"] == {
        "tags": ["bảo mật", "vpn"],
        "department": ["IT"],
    }
    for args, message in [
        (["--access-level", "secret"], "unknown access level 'secret': use one of public, internal, confidential"),
        (["--filter", "department"], "--filter 'department' is not FIELD=VALUE"),
        (["--filter", "author=An"], "filters.author: unknown filter field; filter on one of doc_id, department"),
    ]:
        assert main(["search", "mật khẩu", *root, *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["search", "mật khẩu", *root, "--access-level", "confidential", "--filter", "tags=sự cố"]) == 0
    footer = " ".join(capsys.readouterr().out.split())  # the table's footer, unwrapped; the table has no rows
    assert "access level confidential · tags = sự cố" in footer and "│ 1 │" not in footer
