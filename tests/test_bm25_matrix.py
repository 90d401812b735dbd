"""The streamed BM25 matrix is bm25s's own, value for value, and scores queries bit for bit the same."""

import random

import numpy as np
import pytest

from ragtune.bm25_matrix import bm25s_retriever, build_bm25_matrix


def corpus(seed: int, n_docs: int) -> list[list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)] + ["ma_túy", "người", "của"]
    docs = [rng.choices(words, weights=range(len(words), 0, -1), k=rng.randint(1, 40)) for _ in range(n_docs)]
    docs[3] = ["lẻ"]  # a term in one document only
    docs[5] = docs[5] * 3  # repeated terms
    return docs


@pytest.mark.parametrize(("seed", "batch", "k1", "b"), [(0, 7, 1.5, 0.75), (1, 1000, 1.2, 0.3), (2, 1, 0.9, 1.0)])
def test_streamed_matrix_equals_bm25s_index(seed: int, batch: int, k1: float, b: float) -> None:
    import bm25s

    docs = corpus(seed, 300)
    reference = bm25s.BM25(k1=k1, b=b, method="lucene")
    reference.index(docs, show_progress=False)
    ours = build_bm25_matrix((docs[i : i + batch] for i in range(0, len(docs), batch)), k1, b)
    assert ours.num_docs == reference.scores["num_docs"] == len(docs)
    assert set(ours.vocab) == set(reference.vocab_dict) - {""}
    ref = reference.scores
    for token, t in ours.vocab.items():
        r = reference.vocab_dict[token]
        mine = slice(ours.indptr[t], ours.indptr[t + 1])
        theirs = slice(ref["indptr"][r], ref["indptr"][r + 1])
        assert np.array_equal(ours.indices[mine], ref["indices"][theirs])
        assert ours.data[mine].tobytes() == ref["data"][theirs].tobytes()  # the same float32 bits
    engine = bm25s_retriever(ours, k1, b)
    rng = random.Random(seed)
    vocab = sorted(ours.vocab)
    for _ in range(50):
        query = rng.choices(vocab, k=rng.randint(1, 6)) + (["không_có"] if rng.random() < 0.3 else [])
        assert engine.get_scores(query).tobytes() == reference.get_scores(query).tobytes()


def test_a_document_without_tokens_is_kept_and_scores_zero() -> None:
    docs = [["a", "b"], [], ["a"], ["c", "c", "a"]]
    ours = build_bm25_matrix([docs], 1.5, 0.75)
    assert ours.num_docs == 4
    engine = bm25s_retriever(ours, 1.5, 0.75)
    scores = engine.get_scores(["a"])
    assert scores[1] == 0 and scores[0] > 0 and scores[2] > scores[0]  # shorter document, same tf: higher score


def test_descending_is_the_stable_full_sort_one_prefix_at_a_time() -> None:
    from ragtune.mining import descending

    rng = np.random.default_rng(0)
    for n, levels in [(1, 3), (5, 2), (300, 4), (1000, 1000), (2000, 7)]:
        scores = rng.integers(0, levels, n).astype(np.float32) / 3  # many ties, also at every prefix boundary
        expected = np.argsort(-scores, kind="stable").tolist()
        assert list(descending(scores, first=3)) == expected
        lazy = descending(scores, first=3)
        assert [next(lazy) for _ in range(min(n, 10))] == expected[:10]


@pytest.mark.parametrize(
    ("seed", "batch", "keep"), [(0, 7, [0, 3, 5, 299]), (1, 1000, [150]), (2, 1, list(range(300)))]
)
def test_subset_scores_are_the_full_matrix_scores_of_its_documents(seed: int, batch: int, keep: list[int]) -> None:
    import bm25s

    from ragtune.bm25_matrix import build_bm25_subset

    docs = corpus(seed, 300)
    reference = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    reference.index(docs, show_progress=False)
    subset = build_bm25_subset((docs[i : i + batch] for i in range(0, len(docs), batch)), reversed(keep), 1.2, 0.75)
    rng = random.Random(seed)
    vocab = sorted(subset.vocab)
    for _ in range(50):
        query = rng.choices(vocab, k=rng.randint(1, 6)) + (["không_có"] if rng.random() < 0.3 else [])
        full = reference.get_scores(query)
        assert subset.scores(query).tobytes() == full[sorted(keep)].tobytes()  # the same float32 bits
    assert not subset.scores(["không_có"]).any()


def test_subset_refuses_a_position_past_the_stream() -> None:
    from ragtune.bm25_matrix import build_bm25_subset

    with pytest.raises(IndexError, match="corpus holds 2 documents"):
        build_bm25_subset([[["a"], ["b"]]], [2], 1.5, 0.75)


def test_saved_counts_load_memory_mapped_and_give_the_same_bytes(tmp_path, monkeypatch) -> None:
    """The bm25 stage's counts, saved and loaded memory-mapped, build the same matrix and the same subset rows as
    counting the tokens in the stage itself; placed a few documents at a time as at corpus scale."""
    import ragtune.bm25_matrix as bm

    docs = corpus(4, 200)
    counted = bm.TermCounts.count(docs[i : i + 9] for i in range(0, len(docs), 9))
    counted.save(tmp_path)
    loaded = bm.TermCounts.load(tmp_path)
    assert isinstance(loaded.terms, np.memmap) and loaded.vocab == counted.vocab
    monkeypatch.setattr(bm, "PLACE_DOCS", 7)
    ours, once = loaded.matrix(1.5, 0.75), build_bm25_matrix([docs], 1.5, 0.75)
    for name in ("data", "indices", "indptr"):
        assert getattr(ours, name).tobytes() == getattr(once, name).tobytes()
    keep = [0, 3, 5, 150, 199]
    assert loaded.subset(keep, 1.5, 0.75).rows == bm.build_bm25_subset([docs], keep, 1.5, 0.75).rows


def test_pairs_and_negatives_read_the_bm25_stage_counts_and_refuse_stale_ones(tmp_path) -> None:
    from ragtune.errors import UserError
    from ragtune.io import write_jsonl
    from ragtune.retrieval import load_bm25_counts, run_bm25

    chunks = tmp_path / "chunks.jsonl"
    write_jsonl(chunks, [{"chunk_id": f"c{i}", "text": " ".join(d)} for i, d in enumerate(corpus(5, 40))])
    params = {"tokenizer": "syllable"}
    assert load_bm25_counts(tmp_path / "bm25", chunks, params, 40) is None  # the stage has not run: caller counts
    run_bm25(params, chunks, tmp_path / "bm25")
    assert load_bm25_counts(tmp_path / "bm25", chunks, params, 40).num_docs == 40
    with pytest.raises(UserError, match="dvc repro bm25"):
        load_bm25_counts(tmp_path / "bm25", chunks, {"tokenizer": "bigram"}, 40)  # another tokenizer
    write_jsonl(chunks, [{"chunk_id": f"c{i}", "text": " ".join(d)} for i, d in enumerate(corpus(6, 40))])
    with pytest.raises(UserError, match="another"):
        load_bm25_counts(tmp_path / "bm25", chunks, params, 40)  # the chunks changed since
