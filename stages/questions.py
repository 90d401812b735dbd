"""questions: chunks.jsonl → LLM-written questions per chunk (off unless questions.generator: llm)."""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.questions.run import run_questions


def main() -> None:
    with stage("questions") as summary:
        params = load_params()
        summary.update(
            run_questions(section(params, "questions"), section(params, "model"), section(params, "bm25"), Paths())
        )


if __name__ == "__main__":
    main()
