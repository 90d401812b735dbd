"""Training/evaluation pairs: a leak-free train/dev/test split of labeled queries, plus self-supervised pairs.

Questions keep the split ingest fixed for them (a competition's test file, a curated dev set); the rest are
drawn by a seeded shuffle.

Positives only ever come from labels (a query's relevant documents) or from a document's own structure (its
title, a section heading, one of its sentences). Neighbouring documents are never positives, and pairs carry no
invented graded scores: MultipleNegativesRankingLoss needs only (query, positive), with other positives in the
batch as negatives.
"""

from __future__ import annotations

import random
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITS = ("train", "dev", "test")


def query_key(text: str) -> str:
    """Normalized query text used to detect the same question under different ids (case, spacing, punctuation)."""
    text = unicodedata.normalize("NFC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


@dataclass
class SplitPlan:
    """Labeled queries by split, where each split's questions came from, and the copies the leak guard set aside."""

    splits: dict[str, list[dict[str, Any]]]
    # per split: "fixed" (ingest said so), "drawn" (unassigned, placed by the seeded shuffle) and, for dev,
    # "carved_from_train" (fixed to train, moved to dev because no dev question was fixed)
    sources: dict[str, dict[str, int]]
    quarantine: list[dict[str, Any]]  # {"stage": "pairs", "kind": "query", "source", "reason", "record"}

    @property
    def quarantined(self) -> dict[str, int]:
        """Quarantined copies by reason; every reason is listed, so a 0 in the metrics is a checked 0."""
        counts = Counter(q["reason"] for q in self.quarantine)
        return {reason: counts[reason] for reason in QUARANTINE_REASONS}


QUARANTINE_REASONS = ("same_text_as_dev", "same_text_as_test")


def split_queries(queries: Sequence[dict[str, Any]], dev_ratio: float, test_ratio: float, seed: int) -> SplitPlan:
    """Split labeled queries into train/dev/test, honouring the split ingest fixed for a question (``split``).

    Queries with the same normalized text are one group and land in one split (so a test question can never
    reappear in training under another id). Then:

    * **Fixed** questions (``split`` is train/dev/test) stay in their split. When copies of one text are fixed
      to different splits, the most held-out split keeps it (test > dev > train) and every other copy of that
      text, fixed or unassigned, goes to ``quarantine`` as ``same_text_as_test``/``same_text_as_dev``: the
      user's held-out set stays exactly what they brought, and nothing of it is trained on. Unassigned copies of
      a fixed-train text join that train group.
    * **Unassigned** questions (``split`` null or absent) are drawn: the groups are sorted and shuffled with
      ``seed``; the first ``round(n * test_ratio)`` go to test, ``n`` counting unassigned groups alone.
    * **Dev**: with a fixed dev set, the next ``round(n * dev_ratio)`` unassigned groups join it. Without one,
      dev is carved from the train pool (fixed-train and drawn-train groups, never test): ``round(m *
      dev_ratio)`` groups, ``m`` counting unassigned and fixed-train groups; with no fixed-train group that is
      again the next unassigned groups.

    With nothing fixed this is exactly the plain seeded split (same groups in the same order, same sizes), so
    a corpus without fixed splits keeps byte-identical pair files. Sizes are rounded to whole groups;
    ``test_ratio=1`` evaluates on every unassigned query (e.g. to benchmark a base model).
    """
    if not 0 <= dev_ratio <= 1 or not 0 <= test_ratio <= 1 or dev_ratio + test_ratio > 1:
        raise ValueError(
            f"pairs.dev_ratio={dev_ratio} and pairs.test_ratio={test_ratio} must be in [0, 1] and sum to ≤ 1."
        )
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in queries:
        if q.get("split") is not None and q["split"] not in SPLITS:
            raise ValueError(
                f"query {q['query_id']!r} ({q.get('source', '?')}): split {q['split']!r} is not one of {SPLITS} "
                "or null. queries.jsonl is written by ingest, which normalises split names; re-run ingest."
            )
        by_key[query_key(q["query"])].append(q)
    # the split a text is fixed to: the most held-out split any of its copies is fixed to
    level: dict[str, str | None] = {}
    for k, copies in by_key.items():
        fixed = {q.get("split") for q in copies}
        level[k] = next((s for s in ("test", "dev", "train") if s in fixed), None)

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    quarantine: list[dict[str, Any]] = []
    for q in queries:
        k = query_key(q["query"])
        held = level[k]
        if held in ("dev", "test") and q.get("split") != held:
            kept = next(x for x in by_key[k] if x.get("split") == held)
            record = {**q, "duplicate_of": kept["query_id"]}
            quarantine.append({"stage": "pairs", "kind": "query", "source": q.get("source", ""),
                               "reason": f"same_text_as_{held}", "record": record})  # fmt: skip
            continue
        groups[k].append(q)

    # Unassigned groups: sorted, then shuffled with the seed; test takes the first round(n × test_ratio).
    rng = random.Random(seed)
    drawn = sorted(k for k in groups if level[k] is None)
    rng.shuffle(drawn)
    n_test = round(len(drawn) * test_ratio)
    assignment: dict[str, str] = {k: s for k, s in level.items() if s is not None and k in groups}
    assignment.update(dict.fromkeys(drawn[:n_test], "test"))
    # Dev: the next unassigned groups of that order, or, when no dev question is fixed, a draw from the whole
    # train pool (fixed-train groups too; never test). The pool is shuffled afresh: dealing it from the first
    # order would favour one side, as test has already taken the unassigned groups at its top.
    pool = drawn[n_test:]
    carve = [] if any(level[k] == "dev" for k in groups) else sorted(k for k in groups if level[k] == "train")
    if carve:
        pool = sorted(pool + carve)
        rng.shuffle(pool)
    n_dev = min(round((len(drawn) + len(carve)) * dev_ratio), len(pool))
    assignment.update(dict.fromkeys(pool[:n_dev], "dev"))

    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen = set(drawn)
    for k in [*drawn, *sorted(k for k in groups if k not in seen)]:
        out[assignment.get(k, "train")].extend(groups[k])
    sources: dict[str, dict[str, int]] = {
        "train": {"fixed": 0, "drawn": 0},
        "dev": {"fixed": 0, "drawn": 0, "carved_from_train": 0},
        "test": {"fixed": 0, "drawn": 0},
    }
    for s in SPLITS:
        out[s].sort(key=lambda q: q["query_id"])
        for q in out[s]:
            own = q.get("split")
            sources[s]["drawn" if own is None else "fixed" if own == s else "carved_from_train"] += 1
    return SplitPlan(out, sources, quarantine)


ScoreFn = Callable[[int, list[int]], np.ndarray]


def align_positive_chunks(
    queries: Sequence[dict[str, Any]],
    chunks_by_doc: dict[str, list[int]],
    chunk_ids: Sequence[str],
    scorers: Sequence[ScoreFn],
) -> list[list[str]]:
    """For each query, the chunk of each relevant document that best matches it.

    Labels name documents; training and chunk-level evaluation need the passage. Within a relevant document the
    chunk is chosen by reciprocal-rank fusion of the ``scorers`` (BM25 and base dense: either alone would bias
    chunk-level evaluation towards that system). A scorer maps ``(query_index, chunk_indices)`` to scores.
    """
    out: list[list[str]] = []
    for qi, q in enumerate(queries):
        picked = []
        for doc_id in q["positive_doc_ids"]:
            idx = chunks_by_doc.get(doc_id, [])
            if not idx:
                continue
            if len(idx) == 1:
                picked.append(chunk_ids[idx[0]])
                continue
            fused = np.zeros(len(idx))
            for scorer in scorers:
                local = np.asarray(scorer(qi, idx))
                ranks = np.empty(len(idx))
                ranks[np.argsort(-local, kind="stable")] = np.arange(1, len(idx) + 1)
                fused += 1.0 / (60 + ranks)
            picked.append(chunk_ids[idx[int(np.argmax(fused))]])
        out.append(picked)
    return out


_SENT = re.compile(r"(?<=[.!?…])\s+")


def synthetic_pairs(
    documents: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    per_doc: dict[str, int],
    max_pairs: int,
    seed: int,
    ict_keep_sentence: float = 0.1,
    min_anchor_words: int = 3,
) -> tuple[list[dict[str, Any]], Counter]:
    """Self-supervised (query, positive) pairs for corpora with few or no labels.

    - ``title``: a document's title → its first chunk;
    - ``heading``: a section heading → the first chunk of that section;
    - ``ict``: inverse cloze task (Lee et al., 2019): a sentence → the rest of its chunk. The sentence is removed
      from the positive (kept with probability ``ict_keep_sentence``), so the model learns context, not copy.

    Anchors that are shared by several documents (e.g. "Phạm vi điều chỉnh" heads article 1 of every law) are
    ambiguous: they would put true positives among in-batch negatives, so they are dropped and counted. So are
    anchors shorter than ``min_anchor_words`` words ("Mục đích" says nothing about which document it heads).
    """
    rng = random.Random(seed)
    counts: Counter = Counter()
    by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in chunks:
        by_doc[c["doc_id"]].append(c)
    # Ambiguity is judged over the whole corpus, before sampling: "Mục đích" heads a section in many documents,
    # so it must never become an anchor even if only one of those documents is sampled.
    docs_per_text: dict[str, set[str]] = defaultdict(set)
    for doc in documents:
        docs_per_text[query_key(doc.get("title") or "")].add(doc["doc_id"])
        for c in by_doc.get(doc["doc_id"], []):
            if c["section"]:
                docs_per_text[query_key(c["section"])].add(doc["doc_id"])

    def usable(anchor: str) -> bool:
        key = query_key(anchor)
        if len(key.split()) < min_anchor_words:
            counts["dropped_short_anchor"] += 1
            return False
        if len(docs_per_text.get(key, ())) > 1:
            counts["dropped_ambiguous_anchor"] += 1
            return False
        return True

    candidates: list[dict[str, Any]] = []
    for doc in documents:
        doc_chunks = by_doc.get(doc["doc_id"], [])
        if not doc_chunks:
            continue
        title = doc.get("title") or ""
        if per_doc.get("title", 0) > 0 and title and title != doc["doc_id"] and usable(title):
            candidates.append(_anchor_pair(doc, doc_chunks[0], title, "title"))
        n_head = per_doc.get("heading", 0)
        if n_head > 0:
            heads, seen_sections = [], set()
            for c in doc_chunks:
                sec = c["section"]
                if sec and sec not in seen_sections and sec != title:
                    seen_sections.add(sec)
                    if usable(sec):
                        heads.append(_anchor_pair(doc, c, sec, "heading"))
            # at most n_head heading pairs per document, chosen reproducibly
            candidates.extend(heads if len(heads) <= n_head else rng.sample(heads, n_head))
        for _ in range(per_doc.get("ict", 0)):
            c = rng.choice(doc_chunks)
            body = c["text"]
            # The query sentence comes from the body only: a sentence glued to the title/heading prefix lines
            # would teach the model to match document names, not content.
            lines = _without_lines(body, {title, c["section"] or ""})
            sentences = [s for line in lines for s in _SENT.split(line) if len(s.split()) >= 8]
            if len(sentences) < 2:
                counts["ict_skipped_short_chunk"] += 1
                continue
            sentence = rng.choice(sentences)
            rest = body if rng.random() < ict_keep_sentence else " ".join(body.replace(sentence, " ").split())
            pair = _pair(doc, c, sentence, "ict")
            pair["positive_texts"] = [rest]
            candidates.append(pair)

    docs_per_anchor: dict[str, set[str]] = defaultdict(set)
    for p in candidates:
        docs_per_anchor[query_key(p["query"])].add(p["positive_doc_ids"][0])
    kept, seen = [], set()
    for p in candidates:
        key = query_key(p["query"])
        if len(docs_per_anchor[key]) > 1:
            counts["dropped_ambiguous_anchor"] += 1
            continue
        if (key, p["positive_chunk_ids"][0]) in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add((key, p["positive_chunk_ids"][0]))
        kept.append(p)
    if len(kept) > max_pairs:
        counts["dropped_over_max_pairs"] += len(kept) - max_pairs
        kept = rng.sample(kept, max_pairs)
    kept.sort(key=lambda p: (p["kind"], p["positive_chunk_ids"][0], p["query"]))
    for i, p in enumerate(kept):
        p["query_id"] = f"syn-{p['kind']}-{i:06d}"
    counts.update(p["kind"] for p in kept)
    return kept, counts


def cap_synthetic(
    synthetic: list[dict[str, Any]], n_labeled: int, max_per_labeled: float, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """Keep at most ``max_per_labeled`` synthetic pairs per labeled training question; returns (kept, dropped).

    Why: on ALQAC (40 labeled questions, 2,247 articles) 4,061 synthetic pairs made 99% of the training batches,
    and the fine-tuned model fell 10.7 NDCG@10 points below its base. The labeled questions are the task; the
    synthetic ones are a regulariser and must not outvote them. ``max_per_labeled <= 0`` or no labels: no cap.
    """
    if max_per_labeled <= 0 or n_labeled == 0:
        return synthetic, 0
    limit = int(max_per_labeled * n_labeled)
    if len(synthetic) <= limit:
        return synthetic, 0
    keep = sorted(random.Random(seed).sample(range(len(synthetic)), limit))
    return [synthetic[i] for i in keep], len(synthetic) - limit


def use_synthetic(enabled: bool | str, n_labeled_train: int, min_labeled_train: int) -> bool:
    """Whether to add self-supervised pairs: ``auto`` adds them only when labels are scarce.

    Measured on the shipped sample (184 labeled training questions): adding 400 title/heading/ICT pairs cut the
    fine-tuned model's test NDCG@10 gain from +4.9 to +0.8 points, because they teach topical similarity while the
    labeled questions teach fact lookup. With few or no labels they are the only signal there is.
    """
    if enabled == "auto":
        return n_labeled_train < min_labeled_train
    if isinstance(enabled, bool):
        return enabled
    raise ValueError(f"pairs.synthetic.enabled must be true, false or auto (got {enabled!r})")


def _anchor_pair(doc: dict[str, Any], chunk: dict[str, Any], anchor: str, kind: str) -> dict[str, Any]:
    """A title/heading pair whose positive text no longer contains the anchor line.

    Chunks carry their title (and a continued section's heading) as a prefix line, so "title → its chunk" would
    be a copy task the model solves by string matching. Removing the line makes it learn what the text is about.
    """
    pair = _pair(doc, chunk, anchor, kind)
    kept = _without_lines(chunk["text"], {anchor})
    if len(kept) < chunk["text"].count("\n") + 1 and any(line.strip() for line in kept):
        pair["positive_texts"] = ["\n".join(kept)]
    return pair


def _without_lines(text: str, drop: set[str]) -> list[str]:
    """The lines of ``text``, minus those equal (after stripping) to a non-empty string in ``drop``."""
    drop = {d.strip() for d in drop} - {""}
    return [line for line in text.split("\n") if line.strip() not in drop]


def _pair(doc: dict[str, Any], chunk: dict[str, Any], query: str, kind: str) -> dict[str, Any]:
    return {
        "query": query.strip(),
        "positive_doc_ids": [doc["doc_id"]],
        "positive_chunk_ids": [chunk["chunk_id"]],
        "kind": kind,
    }


def validate(
    splits: dict[str, list[dict[str, Any]]],
    synthetic: Sequence[dict[str, Any]],
    chunks: dict[str, dict[str, Any]],
    documents: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Statistics that make bad pair data visible in `metrics/pairs.json` (and fail loudly on leakage).

    The stage runs this before writing any split file, so a leaked split is never written.
    """
    heldout = {query_key(q["query"]) for s in ("dev", "test") for q in splits[s]}
    train_keys = [query_key(q["query"]) for q in splits["train"]] + [query_key(p["query"]) for p in synthetic]
    leaked = sorted({k for k in train_keys if k in heldout})
    if leaked:
        raise AssertionError(f"{len(leaked)} held-out query texts also appear in training, e.g. {leaked[:3]}")
    test_keys = {query_key(q["query"]) for q in splits["test"]}
    leaked = sorted({query_key(q["query"]) for q in splits["dev"]} & test_keys)
    if leaked:  # model selection on dev would then be selection on test
        raise AssertionError(f"{len(leaked)} test query texts also appear in dev, e.g. {leaked[:3]}")

    def lengths(items):
        return [len(x["query"].split()) for x in items]

    report: dict[str, Any] = {"leaked_heldout_queries": 0}
    for name, items in [*splits.items(), ("synthetic", synthetic)]:
        qlens = lengths(items)
        pos = [chunks[c] for x in items for c in x["positive_chunk_ids"]]
        by_type = Counter(
            documents[d].get("metadata", {}).get("document_type", "unknown")
            for x in items
            for d in x["positive_doc_ids"]
        )
        keys = Counter((query_key(x["query"]), tuple(x["positive_chunk_ids"])) for x in items)
        report[name] = {
            "pairs": len(items),
            "duplicates": sum(n - 1 for n in keys.values() if n > 1),
            "empty_queries": sum(1 for x in items if not x["query"].strip()),
            "no_positive_chunk": sum(1 for x in items if not x["positive_chunk_ids"]),
            "query_words_median": statistics.median(qlens) if qlens else 0,
            "query_length_outliers": sum(1 for n in qlens if n < 2 or n > 64),
            "positive_tokens_median": statistics.median([p["n_tokens"] for p in pos]) if pos else 0,
            "positives_per_query_mean": round(sum(len(x["positive_doc_ids"]) for x in items) / len(items), 3)
            if items
            else 0,
            "by_document_type": dict(sorted(by_type.items())),
        }
    return report
