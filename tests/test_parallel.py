"""ragtune.parallel: ordered results, a bounded read-ahead and worker errors raised in the caller."""

from __future__ import annotations

import pytest

from ragtune.parallel import batched, ordered_map, workers


def test_batched_cuts_lazily_and_keeps_the_remainder() -> None:
    assert list(batched(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []


def test_workers_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_WORKERS", "3")
    assert workers() == 3
    monkeypatch.delenv("RAGTUNE_WORKERS")
    assert workers() >= 1
    for bad in ("two", "0", "-1", "1.5"):  # refused with what is wrong and how to fix it, not a bare int() error
        monkeypatch.setenv("RAGTUNE_WORKERS", bad)
        with pytest.raises(ValueError, match=rf"RAGTUNE_WORKERS='{bad}': not a whole number ≥ 1.*unset it"):
            workers()


@pytest.mark.parametrize("n_workers", [1, 2])
def test_ordered_map_returns_results_in_input_order_and_reads_a_bounded_window(
    monkeypatch: pytest.MonkeyPatch, n_workers: int
) -> None:
    monkeypatch.setenv("RAGTUNE_WORKERS", str(n_workers))
    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield str(i)

    results = ordered_map(int, items(), parallel=True)
    assert next(results) == 0
    # with a pool, at most two items a worker are in flight when the first result comes back; without, one
    assert len(pulled) <= (2 * n_workers if n_workers > 1 else 1)
    assert [0, *results] == list(range(40))


def test_a_worker_error_is_raised_in_the_caller_with_its_own_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_WORKERS", "2")
    with pytest.raises(ValueError, match="invalid literal"):
        list(ordered_map(int, ["1", "2", "x", "4"], parallel=True))


def test_the_initializer_runs_in_process_without_a_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_WORKERS", "2")
    calls = []
    assert list(ordered_map(abs, [-1, 2], parallel=False, initializer=calls.append, initargs=("set",))) == [1, 2]
    assert calls == ["set"]
