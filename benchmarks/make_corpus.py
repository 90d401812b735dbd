"""A legal corpus of any size, for scale benchmarks: Vietnamese documents shaped like a 1.8M-document project's.

Usage (repo root, after `dvc repro ingest`, which writes the sample's sentences to data/interim/documents.jsonl):
    python benchmarks/make_corpus.py --docs 1875511 --seed 0 --out /tmp/corpus-1.8m \
        [--sources data/interim/documents.jsonl ../shared/datasets/alqac2023/corpus.jsonl] [--questions 3000]

The project this mirrors fine-tuned on 1,875,511 JSONL documents averaging 345 characters. This script writes
that many (or any number of) documents with the same length distribution (log-normal, mean 345 characters, a long
tail to ~20,000) and legal structure: a title ("Nghị định số 12/2019/NĐ-CP về ..."), an article heading
("Điều 7. ...") and numbered clauses ("1. ...", "2. ..."). The text is recombined from real Vietnamese sentences
(the ``--sources``: any JSONL files with a ``text`` field, e.g. ragtune's documents.jsonl and ALQAC's corpus), with
the numbers in each sentence redrawn, so that tokenisation, word segmentation and BM25 cost what they cost on real
text. Nothing is copied into the repository: the corpus is written to ``--out``.

It also writes ``--questions`` labeled questions whose answers are known by construction: each one is about a fact
planted in exactly one document (a unique combination of who, what and when, e.g. "Ủy ban nhân dân cấp tỉnh phải
công bố danh mục trong thời hạn 15 ngày kể từ ngày nhận hồ sơ"), asked in other words.

Outputs in ``--out``:
- ``corpus.jsonl``: ``{"id", "title", "text"}`` per line, streamed (memory does not grow with ``--docs``);
- ``questions.jsonl``: ``{"id", "query", "positive_ids": [doc id]}``;
- ``manifest.json``: the arguments, each source's sha256, the length statistics, and each output's sha256.

Deterministic: the same seed and sources give the same bytes (Python's ``random.Random``, one stream, no hashing
of dicts or sets). Read it with ragtune's ingest as ALQAC is read (examples/alqac2023.params.yaml):

    ingest:
      root: /tmp/corpus-1.8m
      documents: [{path: corpus.jsonl}]
      queries: [{path: questions.jsonl, columns: {id: id, query: query, positives: positive_ids}}]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

MEAN_CHARS = 345  # the 1,875,511-document corpus's mean document length
# The documents' targets are log-normal with mean TARGET_MEAN; a document holds at least a heading and one clause, so
# short targets overshoot and the realized mean is higher: TARGET_MEAN is calibrated so that it comes out at
# MEAN_CHARS (345 ± 5 with the sample's and ALQAC's sentences; the manifest reports the realized figure).
TARGET_MEAN = 316
SIGMA = 0.9  # log-normal spread: median ≈ 230 characters, p99 ≈ 2,000, rare documents past 10,000
MAX_CHARS = 20_000
MIN_SENTENCE, MAX_SENTENCE = 25, 400  # characters; shorter fragments and longer run-ons are not used

KINDS = ("Luật", "Nghị định", "Thông tư", "Quyết định", "Nghị quyết")
SUFFIXES = {"Luật": "QH15", "Nghị định": "NĐ-CP", "Thông tư": "TT-BTC", "Quyết định": "QĐ-TTg", "Nghị quyết": "NQ-HĐND"}

# The planted facts: who must do what, within how many days of which event.
ENTITIES = (
    "Ủy ban nhân dân cấp tỉnh",
    "Ủy ban nhân dân cấp xã",
    "Bộ Tài chính",
    "Bộ Y tế",
    "Sở Tư pháp",
    "Sở Kế hoạch và Đầu tư",
    "cơ quan thuế quản lý trực tiếp",
    "người sử dụng lao động",
    "tổ chức tín dụng",
    "doanh nghiệp nhà nước",
    "chủ đầu tư dự án",
    "cơ sở giáo dục đại học",
    "hợp tác xã",
    "cơ quan bảo hiểm xã hội",
    "Ban quản lý khu công nghiệp",
    "Công an cấp huyện",
    "Tòa án nhân dân cấp tỉnh",
    "Viện kiểm sát nhân dân",
    "tổ chức hành nghề công chứng",
    "văn phòng đăng ký đất đai",
)
DUTIES = (
    "công bố danh mục thủ tục hành chính",
    "gửi báo cáo tổng hợp",
    "thông báo bằng văn bản cho người đề nghị",
    "cấp giấy chứng nhận đăng ký",
    "trả lời kiến nghị của tổ chức",
    "niêm yết công khai kết quả",
    "hoàn thành việc thẩm định hồ sơ",
    "chuyển hồ sơ đến cơ quan có thẩm quyền",
    "thanh toán khoản bồi thường",
    "tổ chức đối thoại với người lao động",
    "cập nhật cơ sở dữ liệu quốc gia",
    "ban hành quyết định xử lý",
    "lập biên bản kiểm tra",
    "nộp phí thẩm định",
    "hoàn trả số tiền nộp thừa",
)
EVENTS = (
    "nhận đủ hồ sơ hợp lệ",
    "kết thúc năm tài chính",
    "có quyết định thanh tra",
    "phát hiện vi phạm",
    "ký hợp đồng",
    "hết thời hạn khiếu nại",
    "nhận được đơn đề nghị",
    "bản án có hiệu lực pháp luật",
    "hoàn thành nghiệm thu công trình",
    "chấm dứt hợp đồng lao động",
    "được cấp giấy phép",
    "kết thúc kỳ kiểm toán",
)
TEMPLATES = (  # (the sentence planted in the document, the question asked about it)
    (
        "{entity} phải {duty} trong thời hạn {days} ngày kể từ ngày {event}.",
        "Kể từ ngày {event}, {entity} có bao nhiêu ngày để {duty}?",
    ),
    (
        "Chậm nhất {days} ngày sau ngày {event}, {entity} có trách nhiệm {duty}.",
        "Sau ngày {event} thì {entity} phải {duty} chậm nhất là bao lâu?",
    ),
    (
        "Thời hạn để {entity} {duty} là {days} ngày, tính từ ngày {event}.",
        "{Entity} được bao nhiêu ngày để {duty} tính từ khi {event}?",
    ),
)


def read_sentences(sources: Sequence[Path]) -> list[str]:
    """Every distinct sentence of the sources' ``text`` fields, in first-seen order (so the pool, and the corpus,
    depend only on the files' bytes)."""
    seen: dict[str, None] = {}
    for path in sources:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line).get("text", "")
                except (json.JSONDecodeError, AttributeError) as exc:
                    raise SystemExit(f"{path}:{lineno}: not a JSON object with a text field ({exc})") from exc
                for part in re.split(r"(?<=[.!?;])\s+|\n+", str(text)):
                    part = " ".join(part.split()).strip("-•* ")
                    if MIN_SENTENCE <= len(part) <= MAX_SENTENCE and not part.startswith(("|", "#")):
                        seen.setdefault(part if part[-1] in ".!?;:" else part + ".", None)
    if len(seen) < 50:
        raise SystemExit(
            f"only {len(seen)} usable sentences in {', '.join(map(str, sources))}: give larger --sources (JSONL with "
            "a text field, e.g. data/interim/documents.jsonl after `dvc repro ingest`)"
        )
    return list(seen)


_NUMBER = re.compile(r"\d+")


class Writer:
    """Documents one at a time from one seeded stream."""

    def __init__(self, sentences: Sequence[str], seed: int) -> None:
        self.sentences = sentences
        self.rng = random.Random(seed)
        self.mu = math.log(TARGET_MEAN) - SIGMA**2 / 2  # the log-normal of the targets has mean TARGET_MEAN

    def _vary(self, sentence: str) -> str:
        """The sentence with each number redrawn (same digit count), as legal texts differ in their figures."""
        rng = self.rng
        return _NUMBER.sub(
            lambda m: str(rng.randrange(10 ** (len(m.group()) - 1) if len(m.group()) > 1 else 1, 10 ** len(m.group()))),
            sentence,
        )

    def _fragment(self, words: int) -> str:
        return " ".join(self.rng.choice(self.sentences).rstrip(".!?;:").split()[:words])

    def document(self, i: int, planted: str | None) -> dict[str, str]:
        rng = self.rng
        target = min(MAX_CHARS, max(60, int(rng.lognormvariate(self.mu, SIGMA))))
        kind = rng.choice(KINDS)
        title = f"{kind} số {rng.randrange(1, 400)}/{rng.randrange(1995, 2026)}/{SUFFIXES[kind]} về {self._fragment(8)}"
        lines = [f"Điều {rng.randrange(1, 200)}. {self._fragment(9)}"]
        length, clause = len(lines[0]), 0
        while True:  # clauses until the next one would overshoot the target by more than stopping falls short
            line = f"{clause + 1}. {self._vary(rng.choice(self.sentences))}"
            if clause and length + len(line) + 1 - target > target - length:
                break
            clause += 1
            lines.append(line)
            length += len(line) + 1
        if planted is not None:  # a clause of its own, at a seeded place among the others
            at = rng.randrange(1, len(lines) + 1)
            lines.insert(at, f"{at}. {planted}")
            lines = lines[:1] + [re.sub(r"^\d+\.", f"{k}.", x, count=1) for k, x in enumerate(lines[1:], 1)]
        return {"id": f"VB{i:07d}", "title": title, "text": "\n".join(lines)}


def plant(rng: random.Random, n_questions: int) -> Iterator[tuple[str, str]]:
    """``n_questions`` distinct (fact, question) pairs: each combination of template, entity, duty and event is used
    at most once, so exactly one document holds the answer."""
    sizes = (len(TEMPLATES), len(ENTITIES), len(DUTIES), len(EVENTS))
    total = math.prod(sizes)
    if n_questions > total:
        raise SystemExit(f"--questions {n_questions}: at most {total} distinct planted facts")
    for code in rng.sample(range(total), n_questions):
        t, code = code % sizes[0], code // sizes[0]
        e, code = code % sizes[1], code // sizes[1]
        d, v = code % sizes[2], code // sizes[2]
        fields = {"entity": ENTITIES[e], "duty": DUTIES[d], "event": EVENTS[v], "days": rng.randrange(3, 91)}
        fields["Entity"] = fields["entity"][0].upper() + fields["entity"][1:]
        fact, question = TEMPLATES[t]
        yield fact.format(**fields), question.format(**fields)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_corpus(docs: int, seed: int, sources: Sequence[Path], out: Path, questions: int) -> dict:
    """Write the corpus, the questions and the manifest (module docstring); return the manifest."""
    t0 = time.perf_counter()
    sentences = read_sentences(sources)
    rng = random.Random(seed)
    questions = min(questions, docs)
    hosts = sorted(rng.sample(range(docs), questions))  # the documents that hold a planted fact
    facts = list(plant(rng, questions))
    planted = dict(zip(hosts, facts, strict=True))
    writer = Writer(sentences, seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    lengths: list[int] = []
    with (out / "corpus.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for i in range(docs):
            fact = planted.get(i)
            doc = writer.document(i, fact[0] if fact else None)
            lengths.append(len(doc["text"]))
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with (out / "questions.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for k, (i, (_, question)) in enumerate(sorted(planted.items())):
            fh.write(
                json.dumps({"id": f"Q{k:05d}", "query": question, "positive_ids": [f"VB{i:07d}"]}, ensure_ascii=False)
                + "\n"
            )
    lengths.sort()
    manifest = {
        "docs": docs,
        "seed": seed,
        "questions": questions,
        "sources": {str(p): sha256(p) for p in sources},
        "sentences": len(sentences),
        "chars": {
            "mean": round(statistics.fmean(lengths), 1),
            "p50": lengths[len(lengths) // 2],
            "p99": lengths[int(0.99 * (len(lengths) - 1))],
            "max": lengths[-1],
        },
        "outputs": {name: sha256(out / name) for name in ("corpus.jsonl", "questions.jsonl")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_875_511)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=3000, help="labeled questions, one planted fact each")
    ap.add_argument("--sources", nargs="+", type=Path, default=[Path("data/interim/documents.jsonl")])
    ap.add_argument("--out", type=Path, required=True, help="output folder (not inside the repository)")
    args = ap.parse_args()
    m = make_corpus(args.docs, args.seed, args.sources, args.out, args.questions)
    c = m["chars"]
    print(
        f"[make_corpus] {m['sentences']} sentences from {len(m['sources'])} sources → {args.out}/corpus.jsonl "
        f"({m['docs']} documents, mean {c['mean']} chars, p50 {c['p50']}, p99 {c['p99']}, max {c['max']}) and "
        f"{m['questions']} questions in {m['seconds']} s"
    )


if __name__ == "__main__":
    main()
