"""evaluate says plainly when the test questions were written by an LLM (pairs' synthetic held-out split)."""

from __future__ import annotations

from typing import Any

from ragtune.evaluation.report import evaluate_metrics, evaluation_warnings, question_sources, render_report

RESULTS: dict[str, Any] = {
    "dev": {"n_queries": 10, "doc": {}, "chunk": {}},
    "test": {
        "n_queries": 40,
        "doc": {"ft_dense": {"ndcg@10": 0.8}, "base_dense": {"ndcg@10": 0.7}},
        "chunk": {},
    },
}
GAINS = {"ft_dense": {"gain": 0.1, "ci_low": 0.02, "ci_high": 0.2, "n_queries": 40}}
LLM_TEST = [{"query_id": f"llm:c{i}:factual:0", "source": "llm"} for i in range(40)]
LABELED_TEST = [{"query_id": f"q{i}"} for i in range(40)]


def report(test_questions: dict[str, int] | None) -> str:
    return render_report(
        RESULTS,
        [],
        system_for_errors="ft_dense",
        context={"n_documents": 1, "n_chunks": 1, "base_model": "m"},
        pipeline="ft_dense",
        test_questions=test_questions,
    )


def warnings(test_questions: dict[str, int] | None) -> list[str]:
    return evaluation_warnings(
        RESULTS, fine_tuned=True, pipeline="ft_dense", gains=GAINS, reranker={}, test_questions=test_questions
    )


def test_llm_written_test_questions_are_counted_warned_and_headlined() -> None:
    sources = question_sources(LLM_TEST)
    assert sources == {"labeled": 0, "llm": 40}
    assert evaluate_metrics(RESULTS, gains=GAINS, warnings=[], test_questions=sources)["test_questions"] == sources
    [w] = warnings(sources)
    assert "written by an LLM" in w and "not with real users" in w and "labeled test questions" in w
    lines = report(sources).splitlines()
    headline = lines.index(next(line for line in lines if line.startswith("## Headline")))
    first = lines[headline + 2]  # the section's first line, after the blank one
    assert first.startswith("**All 40 test questions were written by an LLM from held-out chunks")
    assert first.endswith("**") and "Add labeled test questions for a real test" in first


def test_labeled_test_questions_change_nothing() -> None:
    assert question_sources(LABELED_TEST) is None
    assert "test_questions" not in evaluate_metrics(RESULTS, gains=GAINS, warnings=[], test_questions=None)
    assert warnings(None) == []
    assert report(None) == report({"labeled": 40, "llm": 0})
    assert "written by an LLM" not in report(None)


def test_a_mixed_test_split_says_how_many_and_the_line_stands_without_a_headline() -> None:
    sources = question_sources(LABELED_TEST[:10] + LLM_TEST[:30])
    assert sources == {"labeled": 10, "llm": 30}
    text = render_report(
        RESULTS, [], system_for_errors="x", context={"n_documents": 1, "n_chunks": 1, "base_model": "m"},
        test_questions=sources,
    )  # fmt: skip
    assert "## Headline" not in text and "**30 of the 40 test questions were written by an LLM" in text
