"""Quality filters for generated questions: each drop has a reason, and every reason is counted.

An LLM's answer is untrusted input: it can be malformed JSON, the wrong shape, English questions for Vietnamese
text (a known failure of generate-questions tools on non-English corpora), a sentence copied from the chunk (a
question that teaches the embedder nothing but string matching), or a copy of a dev/test question (a leak).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ragtune.pairs import query_key
from ragtune.questions.config import KINDS

MIN_WORDS = 4  # "Lương bao nhiêu?" is too vague to have one right chunk
MAX_WORDS = 60  # longer is a paragraph, not a question anyone types
COPY_RUN = 8  # this many consecutive chunk words in a question is copying, not asking
NEAR_DUPLICATE = 0.8  # word-set Jaccard at or above which two questions of one chunk are the same question

# Quarantined (kept in a file to read) vs dropped (only counted: a duplicate or a leak is not a defect to inspect).
QUARANTINE_REASONS = ("malformed_json", "wrong_shape", "too_short", "too_long", "not_vietnamese", "copied")
DROP_REASONS = ("duplicate", "held_out")

# Letters only Vietnamese uses among Latin-script languages: đ, the horn (ơ ư), the breve on a (ă), the hook above
# (ả) and the dot below (ạ). French or Spanish share é/à, not these.
_VI_MARKS = {"\u0309", "\u0323", "\u031b", "\u0306"}
_VI_FUNCTION_WORDS = (
    "là của và có không được cho những các trong nào gì bao nhiêu như thế khi ai người này đó với để theo từ thì "
    "phải nếu hay hoặc bị sẽ đã đang cần làm sao tại vì mấy ở"
)
_VI_WORDS = frozenset(_VI_FUNCTION_WORDS.split())


@dataclass
class Verdicts:
    """What the filters did: reasons by count (every reason listed, so a 0 in the metrics is a checked 0)."""

    quarantined: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUARANTINE_REASONS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


def parse_answer(text: str) -> tuple[list[tuple[str, Any]], str | None]:
    """``[(kind, question)]`` from an answer, or ``([], reason)`` when it is not the JSON the prompt asked for.

    A Markdown code fence around the JSON is accepted: many chat models add one even when told not to.
    """
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except ValueError:
        return [], "malformed_json"
    items = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return [], "wrong_shape"
    return [
        (item.get("kind"), item.get("question")) if isinstance(item, dict) else (None, None) for item in items
    ], None


def _words(text: str) -> list[str]:
    return query_key(text).split()


def is_vietnamese(text: str) -> bool:
    """Vietnamese if most words are Latin, enough carry diacritics, and a Vietnamese-only mark or word shows up.

    Share of marked words alone would pass French; function words alone would pass unaccented text the prompt
    forbids. Both together are cheap and need no language model.
    """
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(not unicodedata.name(c, "").startswith("LATIN") for c in letters) > 0.2 * len(letters):
        return False
    words = _words(text)
    decomposed = [unicodedata.normalize("NFD", word) for word in words]
    marked = sum(word != unicodedata.normalize("NFD", word.encode("ascii", "ignore").decode()) for word in decomposed)
    vi_only = any(("đ" in word) or (_VI_MARKS & set(nfd)) for word, nfd in zip(words, decomposed, strict=True))
    vi_word = any(word in _VI_WORDS for word in words)
    return bool(words) and marked >= 0.3 * len(words) and (vi_only or vi_word)


def longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest run of consecutive words found in both (a question is short, so O(len·len) is fine)."""
    best = 0
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            if word == other:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def question_problem(question: str, chunk_text: str) -> str | None:
    """The quarantine reason for one question, or None; length first, since a two-word text has no language."""
    words = _words(question)
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    if not is_vietnamese(question):
        return "not_vietnamese"
    run = longest_common_run(words, _words(chunk_text))
    if run >= COPY_RUN or (len(words) >= 5 and run >= 0.8 * len(words)):
        return "copied"
    return None


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class QuestionFilter:
    """Applies every filter in a fixed order, remembering what the run kept (for duplicates across chunks)."""

    def __init__(self, held_out: frozenset[str] = frozenset()) -> None:
        self.held_out = held_out  # query_key of every dev/test question: the leak guard
        self.seen: set[frozenset[str]] = set()  # word sets kept so far in the run: same words, same question
        self.verdicts = Verdicts()

    def chunk_questions(self, chunk: dict[str, Any], answer: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Kept question records and quarantine records for one chunk's answer, kept ones in (kind, text) order."""
        base = {"stage": "questions", "chunk_id": chunk["chunk_id"]}
        items, reason = parse_answer(answer)
        if reason:
            self.verdicts.quarantined[reason] += 1
            return [], [{**base, "kind": "answer", "reason": reason, "record": answer}]
        candidates, quarantine = [], []
        for kind, question in items:
            if kind not in KINDS or not isinstance(question, str):
                problem = "wrong_shape"
            else:
                question = " ".join(question.split())
                problem = question_problem(question, chunk["text"])
            if problem:
                self.verdicts.quarantined[problem] += 1
                quarantine.append(
                    {**base, "kind": "question", "reason": problem, "record": {"kind": kind, "question": question}}
                )
            else:
                candidates.append((KINDS.index(kind), question))
        kept: list[dict[str, Any]] = []
        local: list[frozenset[str]] = []
        for kind_index, question in sorted(candidates):
            key = query_key(question)
            words = frozenset(key.split())
            if key in self.held_out:
                self.verdicts.dropped["held_out"] += 1
            elif words in self.seen or any(_jaccard(words, other) >= NEAR_DUPLICATE for other in local):
                self.verdicts.dropped["duplicate"] += 1
            else:
                self.seen.add(words)
                local.append(words)
                kind = KINDS[kind_index]
                nth = sum(1 for q in kept if q["kind"] == kind)
                kept.append(
                    {
                        "question_id": f"llm:{chunk['chunk_id']}:{kind}:{nth}",
                        "query": question,
                        "kind": kind,
                        "chunk_id": chunk["chunk_id"],
                        "doc_id": chunk.get("doc_id", ""),
                    }
                )
        return kept, quarantine
