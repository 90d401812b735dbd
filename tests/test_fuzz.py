"""Fuzz: random messy corpora and broken params through ingest → chunk → pairs.

Every seed builds a different corpus from the classes in ``fuzz_corpus`` (and sometimes breaks a param). Each run
must end in success or in a :class:`~ragtune.errors.UserError` (what a stage prints as one line, exit 1): any other
exception is a traceback from ragtune's code, which is a bug. After a successful ingest the books must balance,
counted from the records themselves: every document, question and file that was read is either kept or has a
quarantine record with its reason.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
from conftest import shipped_params
from fuzz_corpus import build_corpus

from ragtune.chunking import run_chunk
from ragtune.errors import UserError
from ragtune.ingest import run_ingest
from ragtune.io import read_json, read_jsonl
from ragtune.pairs.run import run_pairs
from ragtune.params import section
from ragtune.paths import Paths

SEEDS = range(24)

# param breakages a user makes; each must be refused with the key in the message, never crash or pass silently
BROKEN_PARAMS = [
    ("min_chars", "hai mươi"),
    ("min_chars", [20]),
    ("min_chars", -5),
    ("max_bad_fraction", -0.1),
    ("max_bad_fraction", "nhiều"),
    ("min_char", 20),  # a typo: an unknown key
    ("querys", []),  # a typo of `queries`
    ("tone_style", "modern"),
]
# the same for the sections chunk and pairs read, checked as a stage checks them (params.section)
BROKEN_STAGE_PARAMS = [
    ("pairs", "dev_ratio", -0.1),
    ("pairs", "test_ratio", 0.95),  # with dev_ratio, above 1
    ("pairs", "seed", "bảy"),
    ("chunk", "max_tokens", "256 tokens"),
    ("chunk", "overlap_tokens", 500),
    ("chunk", "max_token", 256),
    ("model", "max_seq_length", None),
]


def _ingest(seed: int, tmp_path: Path) -> tuple[dict, Paths]:
    ingest_section = {**shipped_params("ingest"), **build_corpus(seed, tmp_path / "corpus")}
    return ingest_section, Paths(tmp_path / "work")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_corpora_end_in_success_or_a_clear_error(seed, tmp_path, tiny_embedder_path):
    ingest_section, paths = _ingest(seed, tmp_path)
    try:
        run_ingest(ingest_section, paths)
    except UserError as exc:
        assert str(exc).strip(), f"seed {seed}: an error without a message"
        return
    _check_ingest_balances(seed, paths)

    params = _stage_params(tiny_embedder_path)
    try:
        run_chunk(section(params, "model"), section(params, "chunk"), 64, paths)
        run_pairs(
            section(params, "pairs"),
            section(params, "model"),
            section(params, "bm25"),
            paths,
        )
    except UserError as exc:
        assert str(exc).strip(), f"seed {seed}: an error without a message"
        return
    chunks = read_jsonl(paths.chunks)
    documents = read_jsonl(paths.documents)
    assert {c["doc_id"] for c in chunks} == {d["doc_id"] for d in documents}, f"seed {seed}: a document lost"
    split_ids = [q["query_id"] for s in ("train", "dev", "test") for q in read_jsonl(paths.split(s))]
    kept = {q["query_id"] for q in read_jsonl(paths.queries)}
    set_aside = {r["record"]["query_id"] for r in read_jsonl(paths.pairs_quarantine)}
    assert len(split_ids) == len(set(split_ids)), f"seed {seed}: a question in two splits"
    assert set(split_ids) | set_aside == kept, f"seed {seed}: a kept question is in no split"


def _stage_params(tiny_embedder_path: Path) -> dict:
    """The shipped model, chunk, pairs and bm25 sections, with the tiny embedder and chunks that fit it."""
    return {
        "model": shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=64),
        "chunk": shipped_params("chunk", max_tokens=48, overlap_tokens=8),
        "pairs": shipped_params("pairs"),
        "bm25": shipped_params("bm25"),
    }


def _check_ingest_balances(seed: int, paths: Paths) -> None:
    """read = kept + quarantined (+ skipped, for files), from the records: a record lost anywhere shows up."""
    metrics = read_json(paths.metrics("ingest"))
    quarantine = read_jsonl(paths.ingest_quarantine)
    by_kind = Counter(r["kind"] for r in quarantine)
    docs = read_jsonl(paths.documents)
    queries = read_jsonl(paths.queries)
    assert all(r.get("reason") for r in quarantine), f"seed {seed}: a quarantine record without a reason"
    for name, kept in (("documents", docs), ("queries", queries)):
        m = metrics[name]
        assert m["kept"] == len(kept), f"seed {seed}: {name} kept"
        assert m["read"] == m["kept"] + m["quarantined"], f"seed {seed}: {name} do not balance: {m}"
    assert metrics["documents"]["quarantined"] == by_kind["document"]
    files = metrics["files"]  # every entry of a document folder: read, skipped (read elsewhere) or quarantined
    assert files["quarantined"] == by_kind["file"], f"seed {seed}: files quarantined"
    assert files["seen"] == files["read"] + files["quarantined"] + files["skipped"], f"seed {seed}: files {files}"
    ids = [d["doc_id"] for d in docs]
    assert len(ids) == len(set(ids)), f"seed {seed}: two kept documents share an id"
    known = set(ids)
    assert all(set(q["positive_doc_ids"]) <= known for q in queries), f"seed {seed}: a positive names no document"


@pytest.mark.parametrize(("key", "value"), BROKEN_PARAMS)
def test_broken_ingest_params_are_refused_with_their_key(key, value, tmp_path):
    ingest_section, paths = _ingest(0, tmp_path)
    ingest_section = copy.deepcopy(ingest_section)
    ingest_section[key] = value
    with pytest.raises(UserError) as err:
        run_ingest(ingest_section, paths)
    assert key.rstrip("s") in str(err.value) or key in str(err.value)
    assert not paths.documents.exists()


@pytest.mark.parametrize(("name", "key", "value"), BROKEN_STAGE_PARAMS)
def test_broken_stage_params_are_refused_with_their_key_path(name, key, value, tiny_embedder_path):
    params = _stage_params(tiny_embedder_path)
    params[name][key] = value
    with pytest.raises(UserError) as err:
        section(params, name)
    assert name in str(err.value) and (key in str(err.value) or "ratio" in str(err.value))


def test_the_fuzz_draws_every_class(tmp_path):
    """The generator is only as good as its spread: across the seeds, every kind of file and table shows up."""
    suffixes: Counter = Counter()
    for seed in SEEDS:
        root = tmp_path / f"s{seed}" / "corpus"
        build_corpus(seed, root)
        suffixes.update(p.suffix or "(none)" for p in root.rglob("*") if p.is_file() or p.is_symlink())
    for suffix in (
        ".md",
        ".txt",
        ".docx",
        ".pdf",
        ".html",
        ".doc",
        ".rtf",
        ".json",
        "(none)",
        ".csv",
        ".jsonl",
        ".xlsx",
    ):
        assert suffixes[suffix] > 0, f"no {suffix} file in {len(SEEDS)} seeds"
