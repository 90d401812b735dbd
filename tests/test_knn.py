import numpy as np
import pytest

from ragtune.knn import BACKENDS, array_blocks, exact_top_k, order_rows


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_rows", [7, 64, 1000])
def test_block_search_equals_brute_force_whatever_the_blocks(backend, block_rows):
    corpus, queries = unit(300, 16, 0), unit(25, 16, 1)
    scores, rows = exact_top_k(queries, array_blocks(corpus, block_rows), 12, backend=backend)
    sims = queries @ corpus.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


def test_a_corpus_smaller_than_k_pads_with_row_minus_one():
    corpus, queries = unit(3, 8, 0), unit(2, 8, 1)
    scores, rows = exact_top_k(queries, array_blocks(corpus, 2), 5, backend="numpy")
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(rows[0, :3].tolist()) == [0, 1, 2]


def test_equal_scores_keep_the_lower_row_first():
    scores = np.array([[0.5, 0.9, 0.5, 0.9]], dtype=np.float32)
    rows = np.array([[8, 6, 2, 3]])
    s, r = order_rows(scores, rows, 3)
    assert r.tolist() == [[3, 6, 2]] and s.tolist() == [[np.float32(0.9), np.float32(0.9), np.float32(0.5)]]


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="not one of faiss, usearch, numpy"):
        exact_top_k(unit(1, 4, 0), [unit(2, 4, 1)], 1, backend="annoy")  # type: ignore[arg-type]
