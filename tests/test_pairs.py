import numpy as np
import pytest
from conftest import TOPICS, shipped_params

from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.pairs import (
    SplitPlan,
    align_positive_chunks,
    cap_synthetic,
    query_key,
    split_queries,
    synthetic_pairs,
    use_synthetic,
    validate,
)
from ragtune.pairs.run import run_pairs
from ragtune.paths import Paths


def make_queries(n):
    return [{"query_id": f"q{i:03d}", "query": f"câu hỏi số {i}", "positive_doc_ids": [f"d{i % 5}"]} for i in range(n)]


def test_split_is_seeded_complete_and_sized():
    qs = make_queries(100)
    a = split_queries(qs, 0.1, 0.2, seed=1).splits
    b = split_queries(qs, 0.1, 0.2, seed=1).splits
    c = split_queries(qs, 0.1, 0.2, seed=2).splits
    assert a == b and a != c
    assert (len(a["train"]), len(a["dev"]), len(a["test"])) == (70, 10, 20)
    ids = [q["query_id"] for s in a.values() for q in s]
    assert sorted(ids) == sorted(q["query_id"] for q in qs)


def test_same_question_text_never_crosses_splits():
    qs = make_queries(40)
    # the same question under different ids, with different case/punctuation
    qs += [{"query_id": f"dup{i}", "query": f"Câu hỏi  số {i}?", "positive_doc_ids": ["d0"]} for i in range(40)]
    for seed in range(5):
        s = split_queries(qs, 0.2, 0.3, seed=seed).splits
        where = {}
        for name, items in s.items():
            for q in items:
                where.setdefault(query_key(q["query"]), set()).add(name)
        assert all(len(v) == 1 for v in where.values())


def test_all_test_split_for_benchmarking():
    s = split_queries(make_queries(10), 0.0, 1.0, seed=0).splits
    assert len(s["test"]) == 10 and not s["train"] and not s["dev"]
    with pytest.raises(ValueError, match="test_ratio"):
        split_queries(make_queries(3), 0.5, 0.6, seed=0)


def plain_seeded_split(queries, dev_ratio, test_ratio, seed):
    """The split before fixed splits existed, kept verbatim as the reference for the all-drawn path."""
    import random
    from collections import defaultdict

    groups = defaultdict(list)
    for q in queries:
        groups[query_key(q["query"])].append(q)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n = len(keys)
    n_test = round(n * test_ratio)
    n_dev = min(round(n * dev_ratio), n - n_test)
    assignment = {k: "test" for k in keys[:n_test]}
    assignment.update({k: "dev" for k in keys[n_test : n_test + n_dev]})
    out = {s: [] for s in ("train", "dev", "test")}
    for k in keys:
        out[assignment.get(k, "train")].extend(groups[k])
    for s in out:
        out[s].sort(key=lambda q: q["query_id"])
    return out


@pytest.mark.parametrize(
    ("n", "dev", "test", "seed"),
    [
        (100, 0.1, 0.2, 1),
        (307, 0.15, 0.25, 42),
        (7, 0.3, 0.3, 3),
        (40, 0.0, 1.0, 0),
        (1, 0.15, 0.25, 5),
        (0, 0.1, 0.1, 0),
    ],
)
def test_all_drawn_split_is_the_plain_seeded_split(n, dev, test, seed):
    """No split fixed anywhere (key absent or null): exactly the old split, so the sample's pair files stay byte-identical."""
    qs = make_queries(n) + [
        {"query_id": f"z{i}", "query": f"Câu hỏi số {i}!", "positive_doc_ids": ["d0"]} for i in range(0, n, 3)
    ]  # same texts under other ids
    plan = split_queries([dict(q, split=None) if i % 2 else q for i, q in enumerate(qs)], dev, test, seed)
    reference = plain_seeded_split(qs, dev, test, seed)
    assert {s: [q["query_id"] for q in v] for s, v in plan.splits.items()} == {
        s: [q["query_id"] for q in v] for s, v in reference.items()
    }
    sizes = {s: len(v) for s, v in plan.splits.items()}
    assert plan.sources == {"train": {"fixed": 0, "drawn": sizes["train"]},
                            "dev": {"fixed": 0, "drawn": sizes["dev"], "carved_from_train": 0},
                            "test": {"fixed": 0, "drawn": sizes["test"]}}  # fmt: skip
    assert plan.quarantine == [] and plan.quarantined == {"same_text_as_dev": 0, "same_text_as_test": 0}


def fixed(prefix, n, split, *, text=None):
    return [
        {"query_id": f"{prefix}{i:03d}", "query": (text or f"{prefix} câu hỏi") + f" {i}", "positive_doc_ids": ["d"],
         "source": f"{prefix}.csv:{i + 2}", "split": split}
        for i in range(n)
    ]  # fmt: skip


def ids(items):
    return {q["query_id"] for q in items}


def test_fixed_splits_stay_and_ratios_apply_to_the_drawn_alone():
    train, dev, test = fixed("tr", 50, "train"), fixed("dv", 5, "dev"), fixed("te", 30, "test")
    drawn = fixed("u", 100, None)
    plan = split_queries([*train, *dev, *test, *drawn], dev_ratio=0.1, test_ratio=0.2, seed=0)
    s = plan.splits
    assert ids(train) <= ids(s["train"]) and ids(dev) <= ids(s["dev"]) and ids(test) <= ids(s["test"])
    # 20% of the 100 drawn questions (not of 185) go to test, 10% to dev; the rest to train
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (50 + 70, 5 + 10, 30 + 20)
    assert plan.sources == {"train": {"fixed": 50, "drawn": 70}, "dev": {"fixed": 5, "drawn": 10, "carved_from_train": 0},
                            "test": {"fixed": 30, "drawn": 20}}  # fmt: skip
    assert ids(drawn) == ids(q for v in s.values() for q in v if q["split"] is None)
    again = split_queries([*drawn, *test, *dev, *train], dev_ratio=0.1, test_ratio=0.2, seed=0)
    assert again.splits == s  # input order does not matter
    assert split_queries([*train, *dev, *test, *drawn], 0.1, 0.2, seed=1).splits != s  # the drawn part is seeded


def test_without_fixed_dev_dev_is_carved_from_train_never_from_test():
    train, test = fixed("tr", 80, "train"), fixed("te", 20, "test")
    plan = split_queries([*train, *test], dev_ratio=0.15, test_ratio=0.25, seed=0)
    s = plan.splits
    assert ids(s["test"]) == ids(test)  # untouched: no drawn question, and test_ratio applies to drawn ones only
    assert len(s["dev"]) == 12 and ids(s["dev"]) <= ids(train)  # 15% of the 80 train questions
    assert ids(s["train"]) | ids(s["dev"]) == ids(train) and not ids(s["train"]) & ids(s["dev"])
    assert plan.sources["dev"] == {"fixed": 0, "drawn": 0, "carved_from_train": 12}
    assert plan.sources["train"] == {"fixed": 68, "drawn": 0}
    # with drawn questions as well, the carve takes from both, and still never from test
    drawn = fixed("u", 40, None)
    mixed = split_queries([*train, *test, *drawn], dev_ratio=0.15, test_ratio=0.25, seed=0)
    assert ids(test) <= ids(mixed.splits["test"]) and len(mixed.splits["test"]) == 20 + 10
    assert len(mixed.splits["dev"]) == round(0.15 * (80 + 40))
    assert ids(mixed.splits["dev"]) <= ids(train) | ids(drawn)
    src = mixed.sources["dev"]
    assert src["carved_from_train"] > 0 and src["drawn"] > 0 and src["fixed"] == 0


def test_text_in_fixed_train_and_test_stays_in_test_and_the_train_copy_is_quarantined():
    test = fixed("te", 3, "test", text="Nghỉ phép mấy ngày")
    train = fixed("tr", 10, "train")
    copy = {**train[0], "query_id": "tr-copy", "query": "nghỉ phép MẤY ngày 1?", "source": "train.csv:99"}
    dev_copy = {**copy, "query_id": "dv-copy", "split": "dev", "source": "dev.csv:5"}
    drawn_copy = {**copy, "query_id": "u-copy", "split": None, "source": "more.csv:2"}
    plan = split_queries([*train, copy, dev_copy, drawn_copy, *test], dev_ratio=0.1, test_ratio=0.0, seed=0)
    s = plan.splits
    assert "te001" in ids(s["test"])  # the test copy is kept
    assert not {"tr-copy", "dv-copy", "u-copy"} & ids([*s["train"], *s["dev"], *s["test"]])
    assert [(q["reason"], q["source"], q["record"]["query_id"], q["record"]["duplicate_of"]) for q in plan.quarantine] == [
        ("same_text_as_test", "train.csv:99", "tr-copy", "te001"),
        ("same_text_as_test", "dev.csv:5", "dv-copy", "te001"),
        ("same_text_as_test", "more.csv:2", "u-copy", "te001"),
    ]  # fmt: skip
    assert all(q["stage"] == "pairs" and q["kind"] == "query" for q in plan.quarantine)
    assert plan.quarantined == {"same_text_as_dev": 0, "same_text_as_test": 3}
    held = {query_key(q["query"]) for q in [*s["dev"], *s["test"]]}
    assert not held & {query_key(q["query"]) for q in s["train"]}


def test_text_in_fixed_train_and_dev_stays_in_dev():
    dev = fixed("dv", 2, "dev", text="Đăng ký ở đâu")
    train = [*fixed("tr", 5, "train"), {**dev[1], "query_id": "tr-copy", "split": "train"}]
    plan = split_queries([*train, *dev], dev_ratio=0.5, test_ratio=0.5, seed=0)
    assert ids(plan.splits["dev"]) == ids(dev)  # fixed dev: nothing carved from train
    assert "tr-copy" not in ids(plan.splits["train"]) and len(plan.splits["train"]) == 5
    assert plan.quarantined == {"same_text_as_dev": 1, "same_text_as_test": 0}


def test_a_drawn_copy_of_a_fixed_train_text_joins_train():
    train = fixed("tr", 20, "train")
    drawn = [{**q, "query_id": f"u{i}", "split": None} for i, q in enumerate(train)]  # same texts, unassigned
    plan = split_queries([*train, *drawn], dev_ratio=0.0, test_ratio=0.5, seed=0)
    assert not plan.splits["test"] and not plan.splits["dev"] and len(plan.splits["train"]) == 40
    assert plan.quarantine == []


def test_an_unknown_split_value_is_refused():
    with pytest.raises(ValueError, match=r"'q1'.*'holdout'.*re-run ingest"):
        split_queries([{"query_id": "q1", "query": "x", "positive_doc_ids": ["d"], "split": "holdout"}], 0.1, 0.1, 0)


def test_alignment_picks_the_best_chunk_of_each_relevant_document():
    queries = [{"query_id": "q", "query": "x", "positive_doc_ids": ["a", "b"]}]
    chunk_ids = ["a#0", "a#1", "b#0"]
    by_doc = {"a": [0, 1], "b": [2]}
    bm25 = np.array([[0.1, 0.9, 0.5]])
    dense = np.array([[0.2, 0.8, 0.3]])
    aligned = align_positive_chunks(
        queries, by_doc, chunk_ids, [lambda qi, idx: bm25[qi, idx], lambda qi, idx: dense[qi, idx]]
    )
    assert aligned == [["a#1", "b#0"]]


DOCS = [
    {"doc_id": "law1@1", "title": "Phạm vi điều chỉnh"},
    {"doc_id": "law2@1", "title": "Phạm vi điều chỉnh"},
    {"doc_id": "pol", "title": "Chính sách nghỉ phép năm"},
]
LONG = (
    "Nhân viên chính thức được hưởng mười hai ngày nghỉ phép có lương mỗi năm làm việc. "
    "Số ngày phép tăng thêm một ngày sau mỗi năm năm thâm niên làm việc liên tục. "
    "Phép năm chưa dùng hết được chuyển sang quý một của năm kế tiếp rồi hết hiệu lực."
)
CHUNKS = [
    {
        "chunk_id": "law1@1#0000",
        "doc_id": "law1@1",
        "section": "",
        "text": "Luật này quy định về ma túy.",
        "n_tokens": 8,
    },
    {
        "chunk_id": "law2@1#0000",
        "doc_id": "law2@1",
        "section": "",
        "text": "Luật này quy định về cư trú.",
        "n_tokens": 8,
    },
    {"chunk_id": "pol#0000", "doc_id": "pol", "section": "Số ngày phép", "text": LONG, "n_tokens": 60},
]


def test_synthetic_pairs_drop_ambiguous_anchors_and_remove_ict_sentence():
    pairs, counts = synthetic_pairs(
        DOCS, CHUNKS, {"title": 1, "heading": 1, "ict": 2}, 100, seed=0, ict_keep_sentence=0
    )
    anchors = [p["query"] for p in pairs]
    assert "Phạm vi điều chỉnh" not in anchors  # shared by two laws: a false-negative factory
    assert counts["dropped_ambiguous_anchor"] == 2
    assert "Chính sách nghỉ phép năm" in anchors and "Số ngày phép" in anchors
    ict = [p for p in pairs if p["kind"] == "ict"]
    assert ict
    for p in ict:
        assert p["query"] not in p["positive_texts"][0]
        assert p["positive_doc_ids"] == ["pol"]
    again, _ = synthetic_pairs(DOCS, CHUNKS, {"title": 1, "heading": 1, "ict": 2}, 100, seed=0, ict_keep_sentence=0)
    assert again == pairs


def test_validate_reports_and_refuses_leakage():
    chunks = {c["chunk_id"]: c for c in CHUNKS}
    docs = {d["doc_id"]: {**d, "metadata": {"document_type": "Policy"}} for d in DOCS}
    q = {
        "query_id": "q1",
        "query": "được nghỉ mấy ngày",
        "positive_doc_ids": ["pol"],
        "positive_chunk_ids": ["pol#0000"],
    }
    splits = {"train": [q, dict(q, query_id="q1b")], "dev": [], "test": []}
    report = validate(splits, [], chunks, docs)
    assert report["train"]["duplicates"] == 1
    assert report["train"]["by_document_type"] == {"Policy": 2}
    leaky = {"train": [q], "dev": [], "test": [dict(q, query_id="t1", query="Được nghỉ mấy ngày?")]}
    with pytest.raises(AssertionError, match="held-out"):
        validate(leaky, [], chunks, docs)
    dev_test = {"train": [], "dev": [q], "test": [dict(q, query_id="t1", query="Được nghỉ mấy ngày?")]}
    with pytest.raises(AssertionError, match="test query texts also appear in dev"):
        validate(dev_test, [], chunks, docs)


def test_synthetic_pairs_auto_only_when_labels_are_scarce():
    assert use_synthetic("auto", 40, 100) and not use_synthetic("auto", 184, 100)
    assert use_synthetic(True, 1000, 100) and not use_synthetic(False, 0, 100)
    with pytest.raises(ValueError, match="auto"):
        use_synthetic("sometimes", 0, 100)


def test_title_pairs_are_not_a_copy_task():
    """A chunk starts with its title line; the title pair's positive must not contain that line."""
    chunk = {**CHUNKS[2], "text": "Chính sách nghỉ phép năm\n" + LONG}
    pairs, _ = synthetic_pairs(DOCS, [*CHUNKS[:2], chunk], {"title": 1}, 100, seed=0)
    (title,) = [p for p in pairs if p["kind"] == "title"]
    assert title["query"] == "Chính sách nghỉ phép năm"
    assert title["positive_texts"] == [LONG]
    assert title["positive_chunk_ids"] == ["pol#0000"]


def test_ict_sentences_come_from_the_body_not_the_title_prefix():
    chunk = {**CHUNKS[2], "text": "Chính sách nghỉ phép năm\nSố ngày phép\n" + LONG}
    pairs, _ = synthetic_pairs(DOCS, [*CHUNKS[:2], chunk], {"ict": 20}, 100, seed=0, ict_keep_sentence=0)
    assert pairs
    for p in pairs:
        assert "Chính sách" not in p["query"] and "\n" not in p["query"]
        assert p["query"] in LONG


def test_synthetic_pairs_are_capped_per_labeled_question():
    syn = [{"query": f"s{i}"} for i in range(50)]
    kept, dropped = cap_synthetic(syn, n_labeled=10, max_per_labeled=2, seed=0)
    assert (len(kept), dropped) == (20, 30)
    assert kept == cap_synthetic(syn, 10, 2, seed=0)[0]  # seeded
    assert all(k in syn for k in kept)
    assert cap_synthetic(syn, 0, 2, seed=0) == (syn, 0)  # no labels: synthetic pairs are all there is
    assert cap_synthetic(syn, 10, 0, seed=0) == (syn, 0)  # 0 = no cap


SYNTHETIC_OFF = {"enabled": False, "min_labeled_train": 100, "per_doc": {"title": 1}, "max_pairs": 10,
                 "ict_keep_sentence": 0.1, "max_per_labeled": 2.0}  # fmt: skip
OUTPUTS = ("data/pairs/train.jsonl", "data/pairs/dev.jsonl", "data/pairs/test.jsonl", "data/pairs/synthetic.jsonl",
           "data/pairs/quarantine.jsonl", "metrics/pairs.json")  # fmt: skip


def one_chunk_inputs(root):
    """Ingest/chunk outputs whose documents have one chunk each (no model needed to align): ten fixed-train
    questions, four fixed-test ones and a train copy of a test question."""
    docs = [{"doc_id": f"d{i}", "title": "", "text": f"văn bản {i}", "source": "x", "metadata": {}} for i in range(3)]
    chunks = [{"chunk_id": f"d{i}#0000", "doc_id": f"d{i}", "title": "", "section": "", "text": f"văn bản {i}",
               "n_tokens": 3, "char_start": 0, "char_end": 9} for i in range(3)]  # fmt: skip
    queries = [
        *fixed("tr", 10, "train"),
        {**fixed("tr", 1, "train", text="Nghỉ phép mấy ngày")[0], "query_id": "tr-copy", "source": "train.csv:99"},
        *fixed("te", 4, "test", text="Nghỉ phép mấy ngày"),
    ]
    for q in queries:
        q["positive_doc_ids"], q["metadata"] = ["d1"], {}
    write_jsonl(root / "data/interim/documents.jsonl", docs)
    write_jsonl(root / "data/interim/queries.jsonl", queries)
    write_jsonl(root / "data/chunks/chunks.jsonl", chunks)


def run_one_chunk_pairs(root):
    pairs = shipped_params("pairs", seed=0, dev_ratio=0.2, test_ratio=0.5, synthetic=SYNTHETIC_OFF)
    # "unused": every relevant document has one chunk, so no model may be loaded
    return run_pairs(pairs, shipped_params("model", embedder="unused"), shipped_params("bm25"), Paths(root))


def test_run_pairs_writes_fixed_splits_quarantine_and_split_sources(tmp_path):
    one_chunk_inputs(tmp_path)
    summary = run_one_chunk_pairs(tmp_path)
    assert summary == {
        "read": "15 labeled queries, 3 chunks",
        "wrote": "train 8 / dev 2 / test 4 labeled + 0 synthetic pairs",
    }
    splits = {s: read_jsonl(tmp_path / f"data/pairs/{s}.jsonl") for s in ("train", "dev", "test")}
    assert {q["query_id"] for q in splits["test"]} == {f"te{i:03d}" for i in range(4)}
    assert len(splits["dev"]) == 2 and len(splits["train"]) == 8  # 20% of the 10 train questions carved to dev
    (quarantined,) = read_jsonl(tmp_path / "data/pairs/quarantine.jsonl")
    assert (quarantined["stage"], quarantined["reason"], quarantined["source"]) == (
        "pairs", "same_text_as_test", "train.csv:99"
    )  # fmt: skip
    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert metrics["split_sources"] == {"train": {"fixed": 8, "drawn": 0},
                                        "dev": {"fixed": 0, "drawn": 0, "carved_from_train": 2},
                                        "test": {"fixed": 4, "drawn": 0}}  # fmt: skip
    assert metrics["quarantined"] == {"same_text_as_dev": 0, "same_text_as_test": 1}
    assert read_jsonl(tmp_path / "data/pairs/synthetic.jsonl") == []


def train_copy_of_test(queries, *args):
    test = [q for q in queries if q["split"] == "test"]
    return SplitPlan({"train": [*test[:1], *queries[:3]], "dev": [], "test": test}, {}, [])


def dev_copy_of_test(queries, *args):
    test = [q for q in queries if q["split"] == "test"]
    return SplitPlan({"train": queries[:3], "dev": test[:1], "test": test}, {}, [])


@pytest.mark.parametrize(
    ("leaky_split", "message"),
    [(train_copy_of_test, "held-out"), (dev_copy_of_test, "test query texts also appear in dev")],
)
def test_run_pairs_writes_nothing_when_validate_refuses_a_leak(tmp_path, monkeypatch, leaky_split, message):
    """split_queries never leaks (it groups copies of a text), so the leak is forced into it; validate must then stop
    run_pairs before any output is written, and the outputs of an earlier good run must not survive to pass for this
    run's (a training stage run by hand would train on them)."""
    import ragtune.pairs.run

    one_chunk_inputs(tmp_path)
    run_one_chunk_pairs(tmp_path)  # an earlier, good run
    assert all((tmp_path / rel).is_file() for rel in OUTPUTS)
    monkeypatch.setattr(ragtune.pairs.run, "split_queries", leaky_split)
    with pytest.raises(AssertionError, match=message):
        run_one_chunk_pairs(tmp_path)
    assert [rel for rel in OUTPUTS if (tmp_path / rel).exists()] == []
    assert list((tmp_path / "data/pairs").iterdir()) == []  # no half-written .tmp file either


def tiny_corpus(root):
    """The TOPICS corpus with two chunks per document (so each question's positive chunk is chosen by BM25 and the
    tiny embedder) and three unassigned questions per document."""
    docs = [{"doc_id": f"D{i}", "title": title, "text": body, "source": "x", "metadata": {"document_type": "Policy"}}
            for i, (title, body) in enumerate(TOPICS)]  # fmt: skip
    chunks = []
    for i, (title, body) in enumerate(TOPICS):
        first, second = (s.strip() + "." for s in body.rstrip(".").split(". ", 1))
        section = f"Chi tiết về {title.lower()}"
        rule = f"Quy định về {title.lower()} áp dụng cho mọi nhân viên chính thức của công ty."
        help_ = f"Phòng nhân sự giải đáp mọi câu hỏi về {title.lower()} trong giờ hành chính."
        texts = [("", f"{title}\n{first} {rule}"), (section, f"{title}\n{section}\n{second} {help_}")]
        for j, (sec, text) in enumerate(texts):
            chunks.append({"chunk_id": f"D{i}#{j:04d}", "doc_id": f"D{i}", "title": title, "section": sec,
                           "text": text, "n_tokens": len(text.split())})  # fmt: skip
    queries = [
        {"query_id": f"Q{i}{j}", "query": q, "positive_doc_ids": [f"D{i}"], "split": None, "metadata": {}}
        for i, (title, body) in enumerate(TOPICS)
        for j, q in enumerate([f"{title} quy định thế nào?", body.split(".")[0].lower() + "?", f"hỏi về {title}"])
    ]
    write_jsonl(root / "data/interim/documents.jsonl", docs)
    write_jsonl(root / "data/interim/queries.jsonl", queries)
    write_jsonl(root / "data/chunks/chunks.jsonl", chunks)
    return docs, chunks, queries


def test_run_pairs_on_a_tiny_corpus(tmp_path, tiny_embedder_path):
    docs, chunks, queries = tiny_corpus(tmp_path)
    model = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=64)
    # shipped synthetic params: "auto" adds synthetic pairs (12 labeled training questions < min_labeled_train)
    pairs = shipped_params("pairs", dev_ratio=0.2, test_ratio=0.3)
    summary = run_pairs(pairs, model, shipped_params("bm25"), Paths(tmp_path))

    splits = {s: read_jsonl(tmp_path / f"data/pairs/{s}.jsonl") for s in ("train", "dev", "test")}
    synthetic = read_jsonl(tmp_path / "data/pairs/synthetic.jsonl")
    # 24 unassigned questions, each its own text: test round(24 × 0.3) = 7, dev round(24 × 0.2) = 5, train the rest
    assert {s: len(v) for s, v in splits.items()} == {"train": 12, "dev": 5, "test": 7}
    assert sorted(q["query_id"] for v in splits.values() for q in v) == sorted(q["query_id"] for q in queries)
    doc_chunks = {d["doc_id"]: {c["chunk_id"] for c in chunks if c["doc_id"] == d["doc_id"]} for d in docs}
    for name, items in splits.items():
        assert [q["query_id"] for q in items] == sorted(q["query_id"] for q in items)
        for q in items:
            assert q["split"] == name and len(q["positive_chunk_ids"]) == 1
            assert q["positive_chunk_ids"][0] in doc_chunks[q["positive_doc_ids"][0]]  # a chunk of its document
    assert read_jsonl(tmp_path / "data/pairs/quarantine.jsonl") == []

    metrics = read_json(tmp_path / "metrics/pairs.json")
    assert {s: metrics[s]["pairs"] for s in ("train", "dev", "test", "synthetic")} == {
        "train": 12, "dev": 5, "test": 7, "synthetic": len(synthetic)
    }  # fmt: skip
    assert metrics["train"]["by_document_type"] == {"Policy": 12} and metrics["leaked_heldout_queries"] == 0
    assert metrics["split_sources"] == {"train": {"fixed": 0, "drawn": 12},
                                        "dev": {"fixed": 0, "drawn": 5, "carved_from_train": 0},
                                        "test": {"fixed": 0, "drawn": 7}}  # fmt: skip
    assert metrics["quarantined"] == {"same_text_as_dev": 0, "same_text_as_test": 0}

    counts = metrics["synthetic"]["by_kind_and_drops"]
    kinds = {kind: sum(1 for p in synthetic if p["kind"] == kind) for kind in ("title", "heading", "ict")}
    assert {kind: counts[kind] for kind in kinds} == kinds  # kept pairs by kind, as written
    # Seeded, and independent of the tiny model: 7 titles ("Mật khẩu" is too short to say which document it heads),
    # 8 headings, ICT sentences drawn from the chunks, 2 of them equal to a dev/test question (each document's second
    # question is its first sentence) and dropped; then 29 pairs capped to 2 per labeled training question (24).
    assert counts == {"dropped_duplicate": 6, "dropped_equal_to_heldout_query": 2, "dropped_over_max_per_labeled": 5,
                      "dropped_short_anchor": 1, "heading": 8, "ict": 10, "ict_skipped_short_chunk": 2, "title": 6}  # fmt: skip
    assert len(synthetic) == 24
    heldout = {query_key(q["query"]) for s in ("dev", "test") for q in splits[s]}
    assert not {query_key(p["query"]) for p in synthetic} & heldout
    assert summary == {"read": "24 labeled queries, 16 chunks",
                       "wrote": "train 12 / dev 5 / test 7 labeled + 24 synthetic pairs"}  # fmt: skip


def test_without_synthetic_pairs_run_pairs_holds_only_the_named_chunks_and_aligns_the_same(
    tmp_path, tiny_embedder_path, monkeypatch
):
    """Without self-supervised pairs, pairs reads the chunks of the documents questions name (and streams the rest
    past BM25's statistics): the splits it writes are those of the run that holds every chunk."""
    import ragtune.pairs.run as run_module

    docs, chunks, _ = tiny_corpus(tmp_path)
    # documents no question names, whose words change BM25's idf: the alignment must still see them
    extra = [{"doc_id": f"X{i}", "title": "", "text": f"Chính sách nghỉ phép số {i}", "source": "x", "metadata": {}}
             for i in range(5)]  # fmt: skip
    extra_chunks = [{"chunk_id": f"X{i}#0000", "doc_id": f"X{i}", "title": "", "section": "", "text": d["text"],
                     "n_tokens": 5} for i, d in enumerate(extra)]  # fmt: skip
    write_jsonl(tmp_path / "data/interim/documents.jsonl", extra[:2] + docs + extra[2:])
    write_jsonl(tmp_path / "data/chunks/chunks.jsonl", extra_chunks[:2] + chunks + extra_chunks[2:])
    model = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=64)
    seen = []

    def spy(queries, chunks, *args):
        seen.append(chunks)
        return positive_chunks(queries, chunks, *args)

    positive_chunks = run_module.positive_chunks
    monkeypatch.setattr(run_module, "positive_chunks", spy)
    written = {}
    for enabled in (True, False):
        pairs = shipped_params("pairs", dev_ratio=0.2, test_ratio=0.3, synthetic={**SYNTHETIC_OFF, "enabled": enabled})
        pairs["synthetic"]["max_pairs"] = 0  # the synthetic pairs themselves are not under test here
        run_pairs(pairs, model, shipped_params("bm25"), Paths(tmp_path))
        written[enabled] = {s: read_jsonl(tmp_path / f"data/pairs/{s}.jsonl") for s in ("train", "dev", "test")}
        written[enabled]["metrics"] = {
            s: read_json(tmp_path / "metrics/pairs.json")[s] for s in ("train", "dev", "test")
        }
    assert written[True] == written[False]
    assert [c.n_chunks for c in seen] == [21, 21]
    assert len(seen[0].records) == 21  # self-supervised pairs need every chunk
    assert [c["chunk_id"] for c in seen[1].records] == [c["chunk_id"] for c in chunks]  # only the named documents'
    assert seen[1].positions == list(range(2, 18))
    assert len(list(seen[1].texts())) == 21  # BM25's statistics still come from every chunk
