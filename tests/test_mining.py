import random

import numpy as np
import pytest

from ragtune.mining import build_groups, mine_dense
from ragtune.retrieval import BM25Index, DenseEncoder, Embedder

CHUNKS = [
    {"chunk_id": "leave#0", "doc_id": "leave", "text": "Nghỉ phép năm: nhân viên có mười hai ngày phép mỗi năm."},
    {"chunk_id": "leave#1", "doc_id": "leave", "text": "Đăng ký nghỉ phép trên LamHR trước ba ngày làm việc."},
    {"chunk_id": "train#0", "doc_id": "train", "text": "Đăng ký khóa đào tạo trên LamAcademy trước năm ngày làm việc."},
    {
        "chunk_id": "unpaid#0",
        "doc_id": "unpaid",
        "text": "Nghỉ không lương tối đa ba mươi ngày mỗi năm, cần giám đốc duyệt.",
    },
    {"chunk_id": "vpn#0", "doc_id": "vpn", "text": "Kết nối HL-VPN bằng WireGuard trên máy tính Windows."},
    {"chunk_id": "mfa#0", "doc_id": "mfa", "text": "Bật xác thực hai lớp cho tài khoản công ty."},
]
PAIR = {
    "query_id": "q1",
    "query": "đăng ký nghỉ phép ở đâu",
    "positive_doc_ids": ["leave"],
    "positive_chunk_ids": ["leave#1"],
}


def test_groups_never_use_positive_document_chunks_as_negatives(tiny_embedder_path):
    from sentence_transformers import SentenceTransformer

    bm25 = BM25Index([c["chunk_id"] for c in CHUNKS]).fit([c["text"] for c in CHUNKS])
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    chunk_text = {c["chunk_id"]: c["text"] for c in CHUNKS}
    dense, _stats = mine_dense(
        [PAIR],
        [c["text"] for c in CHUNKS],
        Embedder("tiny", model, DenseEncoder(model, "", use_cache=False), "query: ", "passage: "),
        num_candidates=4,
        range_min=0,
        range_max=5,
        relative_margin=0.0,
        chunk_text=chunk_text,
    )
    groups, _counts = build_groups(
        [PAIR], CHUNKS, bm25, dense, n_bm25=1, n_dense=1, n_random=1, bm25_skip_top=0, bm25_max_ratio=1.0, seed=0
    )
    (g,) = groups
    assert g["pos"] == [chunk_text["leave#1"]]
    assert not any(n.startswith("leave#") for n in g["neg_ids"])
    assert len(set(g["neg_ids"])) == len(g["neg_ids"])
    assert g["neg_sources"] == ["dense", "bm25", "random"]  # dense first: trainers taking n use those first
    # FlagEmbedding shape
    assert set(g) >= {"query", "pos", "neg"} and len(g["neg"]) == len(g["neg_ids"])
    # the lexical near-miss (training registration) is a hard negative
    assert "train#0" in g["neg_ids"][:2]


def test_bm25_margin_guard_drops_candidates_as_strong_as_the_positive():
    bm25 = BM25Index([c["chunk_id"] for c in CHUNKS]).fit([c["text"] for c in CHUNKS])
    pair = dict(PAIR, query="đăng ký trước ngày làm việc")  # matches leave#1 and train#0 about equally
    strict, counts = build_groups(
        [pair], CHUNKS, bm25, {}, n_bm25=1, n_dense=0, n_random=0, bm25_skip_top=0, bm25_max_ratio=0.5, seed=0
    )
    assert "train#0" not in strict[0]["neg_ids"]
    assert counts["bm25_dropped_too_close_to_positive"] >= 1


def test_random_negatives_are_seeded():
    a, _ = build_groups(
        [PAIR], CHUNKS, None, {}, n_bm25=0, n_dense=0, n_random=2, bm25_skip_top=0, bm25_max_ratio=1, seed=3
    )
    b, _ = build_groups(
        [PAIR], CHUNKS, None, {}, n_bm25=0, n_dense=0, n_random=2, bm25_skip_top=0, bm25_max_ratio=1, seed=3
    )
    assert a == b and a[0]["neg_sources"] == ["random", "random"]


def test_a_chunk_both_sources_find_is_one_negative_not_two():
    """Dense and BM25 often agree on the top near-miss; the group must not list it twice (it did: BM25 did not check
    what dense had already taken, and the FlagEmbedding file carried duplicate negatives)."""
    bm25 = BM25Index([c["chunk_id"] for c in CHUNKS]).fit([c["text"] for c in CHUNKS])
    top_bm25 = next(
        CHUNKS[i] for i in np.argsort(-bm25.scores(PAIR["query"]), kind="stable") if CHUNKS[int(i)]["doc_id"] != "leave"
    )
    dense = {"q1": [(top_bm25["text"], 0.9)]}  # dense picked the chunk BM25 ranks first
    groups, _ = build_groups(
        [PAIR], CHUNKS, bm25, dense, n_bm25=1, n_dense=1, n_random=1, bm25_skip_top=0, bm25_max_ratio=1.0, seed=0
    )
    (g,) = groups
    assert g["neg_ids"][0] == top_bm25["chunk_id"] and g["neg_sources"][0] == "dense"
    assert len(set(g["neg_ids"])) == len(g["neg_ids"])  # before the fix: [top, top, random]


def test_run_negatives_writes_groups_and_metrics(tmp_path, tiny_embedder_path):
    """The stage's wiring on a tmp repo: train + synthetic pairs with a positive become groups, a pair without one
    is skipped, and the metrics count what the groups hold."""
    from conftest import shipped_params

    from ragtune.io import read_json, read_jsonl, write_jsonl
    from ragtune.mining import run_negatives
    from ragtune.paths import Paths

    paths = Paths(tmp_path)
    synthetic = {**PAIR, "query_id": "s1", "query": "kết nối VPN thế nào", "positive_doc_ids": ["vpn"]}
    synthetic["positive_chunk_ids"] = ["vpn#0"]
    unlabelled = {**PAIR, "query_id": "q2", "query": "bật xác thực hai lớp", "positive_chunk_ids": []}
    write_jsonl(paths.chunks, CHUNKS)
    write_jsonl(paths.train, [PAIR, unlabelled])
    write_jsonl(paths.synthetic, [synthetic])
    negatives_p = shipped_params("negatives", n_bm25=1, n_dense=1, n_random=1, dense_range_max=5)
    model_p = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=128)
    summary = run_negatives(negatives_p, model_p, shipped_params("bm25"), paths)

    groups = read_jsonl(paths.train_groups)
    assert [g["query_id"] for g in groups] == ["q1", "s1"]
    for g, positive_doc in zip(groups, ("leave", "vpn"), strict=True):
        assert g["neg_ids"] and not any(n.startswith(f"{positive_doc}#") for n in g["neg_ids"])
    n_neg = sum(len(g["neg"]) for g in groups)
    metrics = read_json(paths.metrics("negatives"))
    assert metrics["groups"] == 2 and metrics["negatives"] == n_neg
    assert sum(metrics["by_source"].values()) == n_neg and set(metrics["by_source"]) == {"bm25", "dense", "random"}
    assert summary == {"read": f"2 training pairs, {len(CHUNKS)} chunks", "wrote": f"2 groups with {n_neg} negatives"}
    assert metrics["dense_mining"] == {"used": True, "reason": "negatives.dense auto"}  # 5 chunks: well in budget
    assert "dense_positive_score_mean" in metrics  # the base embedder mined

    # over budget: auto measures, says why, and mines BM25 and random negatives only
    run_negatives({**negatives_p, "dense_budget_s": 1e-9}, model_p, shipped_params("bm25"), paths)
    metrics = read_json(paths.metrics("negatives"))
    assert metrics["dense_mining"] == {"used": False, "reason": "negatives.dense auto"}
    assert "dense_positive_score_mean" not in metrics and metrics["by_source"]["dense"] == 0
    assert metrics["by_source"]["bm25"] > 0

    # with the bm25 stage's counts (what dvc repro runs): the same groups, BM25 negatives included
    from ragtune.retrieval import run_bm25

    counted_here = paths.train_groups.read_bytes()
    run_bm25(shipped_params("bm25"), paths.chunks, paths.bm25_counts)
    run_negatives({**negatives_p, "dense_budget_s": 1e-9}, model_p, shipped_params("bm25"), paths)
    assert paths.train_groups.read_bytes() == counted_here


def test_dense_auto_decides_on_the_measured_encode_time():
    from ragtune.mining import decide_dense

    def never() -> float:
        raise AssertionError("on, off and n_dense 0 need no probe")

    assert decide_dense("on", 3, 10**7, 1.0, never).use
    assert not decide_dense("off", 3, 10, 1e9, never).use
    assert not decide_dense("auto", 0, 10, 1e9, never).use
    fits = decide_dense("auto", 3, 1_000, 1800, lambda: 10.0)  # 100 s
    assert fits.use and fits.estimated_encode_s == 100.0 and "within" in fits.why
    over = decide_dense("auto", 3, 1_875_511, 1800, lambda: 12.0)  # ~43 h
    assert not over.use and "over" in over.why and "43.4 h" in over.why and over.rule == "negatives.dense auto"


def test_a_streamed_corpus_holds_only_named_texts_and_mines_the_same_groups(tmp_path):
    """The stage reads chunks in a stream (MiningCorpus.read): it keeps the texts of the pairs' positives, finds
    other texts by digest, and fetches only the chosen negatives' texts; the groups equal those of the whole list."""
    from ragtune.io import write_jsonl
    from ragtune.mining import MiningCorpus

    copy = {"chunk_id": "faq#0", "doc_id": "faq", "text": CHUNKS[1]["text"]}  # leave#1's text, another document
    chunks = [*CHUNKS, copy, *({"chunk_id": f"x{i}#0", "doc_id": f"x{i}", "text": f"Đăng ký mục {i} trên LamHR."}
                                for i in range(30))]  # fmt: skip
    write_jsonl(tmp_path / "chunks.jsonl", chunks)
    ict = {**PAIR, "query_id": "q2", "positive_texts": ["Đăng ký nghỉ phép trên LamHR."]}
    pairs = [PAIR, ict]
    fetched: list[set[int]] = []
    streamed = MiningCorpus.read(tmp_path / "chunks.jsonl", pairs)
    read_texts = streamed.texts
    streamed.texts = lambda wanted: fetched.append(wanted) or read_texts(wanted)  # type: ignore[method-assign]
    assert streamed.text_of == {"leave#1": CHUNKS[1]["text"]}  # no other text is held
    assert dict(streamed.doc_chunks) == {"leave": [0, 1]}
    bm25 = BM25Index([c["chunk_id"] for c in chunks]).fit([c["text"] for c in chunks])
    kwargs = {"n_bm25": 3, "n_dense": 0, "n_random": 3, "bm25_skip_top": 0, "bm25_max_ratio": 1.0, "seed": 1}
    whole, whole_stats = build_groups(pairs, chunks, bm25, {}, **kwargs)
    groups, stats = build_groups(pairs, streamed, bm25, {}, **kwargs)
    assert groups == whole and stats == whole_stats
    assert fetched == [{i for g in groups for i in map([c["chunk_id"] for c in chunks].index, g["neg_ids"])}]


def test_no_copy_of_a_positive_text_is_a_negative():
    """A chunk whose text equals a positive's answers the query as well as the positive does, whichever document it
    sits in. Before, only the first chunk with that text was excluded: later copies could be drawn (here, with BM25's
    ratio guard off and every chunk drawable at random, they were)."""
    copies = [{"chunk_id": f"faq{i}#0", "doc_id": f"faq{i}", "text": CHUNKS[1]["text"]} for i in range(3)]
    chunks = [*copies, *CHUNKS]  # a copy comes before the positive itself, two after
    bm25 = BM25Index([c["chunk_id"] for c in chunks]).fit([c["text"] for c in chunks])
    for seed in range(20):
        groups, _ = build_groups(
            [PAIR], chunks, bm25, {}, n_bm25=3, n_dense=0, n_random=4, bm25_skip_top=0, bm25_max_ratio=9.0, seed=seed
        )
        assert not any(n.startswith("faq") for n in groups[0]["neg_ids"])
        assert len(groups[0]["neg_ids"]) == 4  # the four chunks of other documents: bm25 and random take them all


WORDS = [
    "nghỉ",
    "phép",
    "năm",
    "đăng",
    "ký",
    "khóa",
    "đào",
    "tạo",
    "lương",
    "thưởng",
    "hợp",
    "đồng",
    "bảo",
    "hiểm",
    "xã",
    "hội",
    "máy",
    "tính",
    "mật",
    "khẩu",
    "công",
    "ty",
]


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
# the tiny model's cosines lie in 0.93–0.98: margins of 0.5–1% keep some candidates and drop others
@pytest.mark.parametrize(("range_min", "margin"), [(0, 0.005), (2, 0.0), (1, 0.01)])
def test_dense_mining_follows_mine_hard_negatives(tiny_embedder_path, backend, range_min, margin):
    """The stage's own mining (sharded encode, exact block search) gives what sentence-transformers'
    mine_hard_negatives gives on the same model: the same candidates in the same order, the same scores, the same
    statistics, with repeated query texts (their positives pooled), pairs with two positives and positives that are
    not in the corpus."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    rng = random.Random(7)
    corpus = list(dict.fromkeys(" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(90)))
    chunk_text = {f"c{i}": t for i, t in enumerate(corpus)}
    pairs = [  # a query is some of its positive's words, so that the positive ranks well and the margin matters
        {"query_id": f"q{i}", "query": " ".join(corpus[3 * i].split()[:3]), "positive_chunk_ids": [f"c{3 * i}"]}
        for i in range(12)
    ]
    pairs.append(dict(pairs[0], query_id="q0-again", positive_chunk_ids=["c5"]))  # a query text seen twice
    pairs.append({"query_id": "two", "query": "mật khẩu máy tính", "positive_chunk_ids": ["c1", "c2"]})
    pairs.append(
        {
            "query_id": "outside",
            "query": "bảo hiểm",
            "positive_texts": ["bảo hiểm y tế ngoài kho"],
            "positive_chunk_ids": [],
        }
    )
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    ours, our_stats = mine_dense(
        pairs,
        corpus,
        Embedder("tiny", model, DenseEncoder(model, "", batch_size=4, use_cache=False), "q: ", "p: "),
        num_candidates=6,
        range_min=range_min,
        range_max=20,
        relative_margin=margin,
        chunk_text=chunk_text,
        knn_backend=backend,
    )

    rows = {"anchor": [], "positive": []}
    for p in pairs:
        for text in p.get("positive_texts") or [chunk_text[c] for c in p["positive_chunk_ids"]]:
            rows["anchor"].append(p["query"])
            rows["positive"].append(text)
    mined = mine_hard_negatives(
        Dataset.from_dict(rows),
        model,
        corpus=corpus,
        range_min=range_min,
        range_max=20,
        relative_margin=margin,
        num_negatives=6,
        sampling_strategy="top",
        query_prompt="q: ",
        corpus_prompt="p: ",
        output_format="labeled-list",
        output_scores=True,
        batch_size=4,
        verbose=False,
    )
    theirs: dict[str, list[tuple[str, float]]] = {}
    by_query = {row["anchor"]: list(zip(row["positive"][1:], row["scores"][1:], strict=True)) for row in mined}
    for p in pairs:
        theirs.setdefault(p["query_id"], by_query.get(p["query"], []))
    assert sum(map(len, ours.values())) > 20  # the rule keeps something to compare
    assert {q: [t for t, _ in c] for q, c in ours.items()} == {q: [t for t, _ in c] for q, c in theirs.items()}
    for q in ours:
        np.testing.assert_allclose([s for _, s in ours[q]], [s for _, s in theirs[q]], atol=1e-5)
    pos = [s[0] for s in mined["scores"]]
    neg = [x for s in mined["scores"] for x in s[1:]]
    assert our_stats == {
        "dense_positive_score_mean": round(float(np.mean(pos)), 4),
        "dense_negative_score_mean": round(float(np.mean(neg)), 4),
    }
    if margin:  # the margin dropped something, so the test reaches that rule
        assert any(len(c) < 6 for c in ours.values())
