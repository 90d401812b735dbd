"""The dev candidate pool (train_embedder.dev_pool_k): what it holds, that it is deterministic, that ranking within it
gives the full-corpus score wherever the model's top 10 lies inside it, and that the stage scores dev against it."""

from __future__ import annotations

import pytest
import yaml
from conftest import VI_SENTENCES, make_stage_dir

from ragtune.io import read_json, read_jsonl
from ragtune.models import load_embedder, model_fingerprint
from ragtune.paths import Paths
from ragtune.retrieval import build_bm25
from ragtune.train.embedder import run as embedder_run
from ragtune.train.embedder.dev import build_dev_pool, build_ir_evaluator, dev_pool
from ragtune.train.embedder.run import run_train_embedder

BM25 = {"tokenizer": "syllable", "backend": "bm25s", "k1": 1.5, "b": 0.75}
METRICS = ("ndcg@k", "mrr@k", "map@k")


def corpus(docs: int = 40, per_doc: int = 3) -> list[dict]:
    """``docs`` documents of ``per_doc`` chunks, each chunk two of the test sentences, so chunks differ and a
    document's chunks share its first sentence (as a document's chunks share its topic)."""
    n = len(VI_SENTENCES)
    return [
        {
            "chunk_id": f"d{d:02d}#{j}",
            "doc_id": f"d{d:02d}",
            "text": f"{VI_SENTENCES[d % n]} {VI_SENTENCES[(d // n + 3 * j + 1) % n]}",
        }
        for d in range(docs)
        for j in range(per_doc)
    ]


def questions(docs: list[str]) -> list[dict]:
    """One dev question per document: the first half of its first sentence, labeled with it and its first chunk."""
    n = len(VI_SENTENCES)
    return [
        {
            "query_id": f"q{d}",
            "query": " ".join(VI_SENTENCES[int(d[1:]) % n].split()[:6]),
            "positive_doc_ids": [d],
            "positive_chunk_ids": [f"{d}#0"],
        }
        for d in docs
    ]


@pytest.fixture(scope="module")
def model(tiny_embedder_path):
    return load_embedder(str(tiny_embedder_path))


def ranking_of(model, dev: list[dict], chunks: list[dict]) -> dict[str, list[tuple[str, float]]]:
    """The model's own full chunk ranking per question (cosine, ties by id), computed here without ragtune."""
    c = model.encode([x["text"] for x in chunks], prompt="passage: ", normalize_embeddings=True)
    q = model.encode([x["query"] for x in dev], prompt="query: ", normalize_embeddings=True)
    sims = q @ c.T
    return {
        d["query_id"]: sorted(
            ((x["chunk_id"], float(s)) for x, s in zip(chunks, row, strict=True)), key=lambda h: (-h[1], h[0])
        )
        for d, row in zip(dev, sims, strict=True)
    }


def pool(model, dev, chunks, level, k, tiny_embedder_path):
    return build_dev_pool(
        dev,
        chunks,
        level=level,
        k=k,
        base=model,
        base_fingerprint=model_fingerprint(str(tiny_embedder_path)),
        query_prompt="query: ",
        passage_prompt="passage: ",
        bm25_params=BM25,
        batch_size=8,
    )


@pytest.mark.parametrize("level", ["doc", "chunk"])
def test_the_pool_is_the_labeled_chunks_and_both_top_k_and_nothing_else(model, tiny_embedder_path, level):
    chunks = corpus()
    dev = questions(["d03", "d17", "d31"])
    k = 4
    got = pool(model, dev, chunks, level, k, tiny_embedder_path)

    bm25 = build_bm25(chunks, BM25).search({q["query_id"]: q["query"] for q in dev}, k)
    dense = ranking_of(model, dev, chunks)
    want: set[str] = set()
    for q in dev:
        labeled = (
            {c["chunk_id"] for c in chunks if c["doc_id"] in q["positive_doc_ids"]}  # every chunk of the document
            if level == "doc"
            else set(q["positive_chunk_ids"])
        )
        top_bm25 = {cid for cid, s in bm25[q["query_id"]] if s > 0}
        top_dense = {cid for cid, _ in dense[q["query_id"]][:k]}
        assert top_bm25 and labeled | top_bm25 | top_dense <= set(got.chunk_ids), q["query_id"]
        want |= labeled | top_bm25 | top_dense
    assert set(got.chunk_ids) == want  # nothing else: 3 questions × (3 labeled + 4 + 4) ≤ 33 of 120 chunks
    assert got.chunk_ids == [c["chunk_id"] for c in chunks if c["chunk_id"] in want]  # in corpus order
    m = got.metrics()
    assert m["k"] == k and m["chunks"] == len(want) < m["corpus_chunks"] == len(chunks)
    assert m["fraction"] == round(len(want) / len(chunks), 4) and m["seconds"] >= 0
    assert m["docs_per_query_min"] >= 2  # at least the labeled document and one other


def test_the_pool_is_deterministic(model, tiny_embedder_path):
    """Same input, same ids in the same order, whatever the order of the questions (the pool is a set of chunks
    in corpus order)."""
    chunks = corpus()
    dev = questions(["d03", "d17", "d31", "d05"])
    first = pool(model, dev, chunks, "doc", 5, tiny_embedder_path)
    again = pool(model, dev, chunks, "doc", 5, tiny_embedder_path)
    shuffled = pool(model, dev[::-1], chunks, "doc", 5, tiny_embedder_path)
    assert first.chunk_ids == again.chunk_ids == shuffled.chunk_ids


def test_no_pool_scores_the_whole_corpus_as_before():
    chunks = corpus(docs=6)
    dev = questions(["d01"])
    for level in ("doc", "chunk"):
        whole = build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level)
        assert whole.corpus_ids == [c["chunk_id"] for c in chunks]
        some = build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level, pool={"d01#0", "d04#2"})
        assert some.corpus_ids == ["d01#0", "d04#2"] and some.queries_ids == whole.queries_ids
        assert some.relevant_docs == whole.relevant_docs  # labels unchanged: only the corpus shrinks


def _scores(evaluator, model) -> dict[str, float]:
    out = evaluator(model)
    return {k.replace("dev_cosine_", ""): v for k, v in out.items() if "cosine" in k}


@pytest.mark.parametrize("level", ["doc", "chunk"])
def test_pooled_scores_equal_full_corpus_scores_when_the_top_10_lies_in_the_pool(model, level):
    """The docstring's claim, made exact: rank within a pool that holds the model's chunks down to its tenth
    document (tenth chunk at chunk level), and every @10 metric equals the full corpus's. A pool that misses the top
    10 (only the labeled chunks) is optimistic instead: the bias the pool's docstring names."""
    chunks = corpus()
    dev = questions(["d03", "d17", "d31", "d05"])
    ranking = ranking_of(model, dev, chunks)
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    depth = 0  # the deepest rank any question needs for its top 10 (documents or chunks)
    for hits in ranking.values():
        seen: list[str] = []
        for rank, (cid, _) in enumerate(hits, start=1):
            item = chunk_to_doc[cid] if level == "doc" else cid
            seen += [] if item in seen else [item]
            if len(seen) == 10:
                depth = max(depth, rank)
                break
    inside, _ = dev_pool(dev, chunks, level, [ranking], depth)
    labeled_only, _ = dev_pool(dev, chunks, level, [], 0)
    assert len(inside) < len(chunks)  # a real restriction of the corpus

    full = _scores(build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level), model)
    pooled = _scores(build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level, pool=inside), model)
    for name in ("ndcg@10", "mrr@10", "map@10", "accuracy@1", "accuracy@10", "recall@10", "precision@10"):
        assert pooled[name] == pytest.approx(full[name], abs=1e-6), name

    optimistic = _scores(build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level, pool=labeled_only), model)
    # without the top 10, only the other questions' labeled chunks compete: the tiny model looks far better than it is
    assert optimistic["ndcg@10"] > full["ndcg@10"] + 0.3


@pytest.mark.parametrize("level", ["doc", "chunk"])
def test_the_base_score_from_the_pools_vectors_equals_a_re_encode(model, tiny_embedder_path, level):
    """The stage scores the base model before training from the vectors the pool was ranked with, not by encoding
    the pool again: the rows follow the evaluator's corpus order, and every metric equals the re-encoded one."""
    chunks = corpus()
    dev = questions(["d03", "d17", "d31", "d05"])
    built = pool(model, dev, chunks, level, 4, tiny_embedder_path)
    vectors = built.base_corpus_embeddings()
    evaluator = build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=level, pool=built.chunk_ids)
    assert evaluator.corpus_ids == built.chunk_ids and tuple(vectors.shape) == (len(built.chunk_ids), 32)
    text = {c["chunk_id"]: c["text"] for c in chunks}
    fresh = model.encode([text[c] for c in built.chunk_ids], prompt="passage: ", normalize_embeddings=True)
    assert vectors.numpy() == pytest.approx(fresh, abs=1e-5)  # row i is chunk_ids[i]'s vector

    reused = evaluator(model, corpus_embeddings=vectors)
    encoded = evaluator(model)
    assert reused.keys() == encoded.keys()
    for name, value in encoded.items():
        assert reused[name] == pytest.approx(value, abs=1e-6), name


def test_the_stage_scores_the_base_model_from_the_pools_vectors(tmp_path, tiny_embedder_path, monkeypatch):
    """dev before training reads the pool's base vectors (no corpus encode of its own); with no pool it encodes."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as cls

    calls: list[bool] = []
    real = cls.compute_all_metrics  # the document-level evaluator inherits it

    def spy(self, model, *args, corpus_embeddings=None, **kwargs):
        calls.append(corpus_embeddings is not None)
        return real(self, model, *args, corpus_embeddings=corpus_embeddings, **kwargs)

    monkeypatch.setattr(cls, "compute_all_metrics", spy)
    for k in (1, 0):
        calls.clear()
        work = make_stage_dir(tmp_path / str(k), tiny_embedder_path, train_embedder={"max_steps": 2, "dev_pool_k": k})
        params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
        run_train_embedder(params["model"], params["train_embedder"], Paths(work), bm25_p=params["bm25"])
        assert calls[0] is (k > 0) and not any(calls[1:])  # only the first check, the base model's, reuses vectors
        assert read_json(Paths(work).metrics("train_embedder"))["dev"]["before"]["ndcg@10"] >= 0


def _spy_trainers(monkeypatch) -> list:
    built: list = []
    real = embedder_run.build_trainer

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(embedder_run, "build_trainer", spy)
    return built


@pytest.mark.parametrize("k", [0, 1])
def test_the_stage_scores_dev_against_the_pool_and_records_it(tmp_path, tiny_embedder_path, monkeypatch, k):
    """dev_pool_k: 0 is the evaluator over every chunk, as before the pool; 1 keeps each dev question's labeled
    document and BM25's and the base model's first chunk: at most 3 chunks a question, 6 of the 8. The metrics
    record the pool; the final dev evidence still ranks every chunk (its 2 questions score as before)."""
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder={"max_steps": 2, "dev_pool_k": k})
    paths = Paths(work)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    built = _spy_trainers(monkeypatch)

    run_train_embedder(params["model"], params["train_embedder"], paths, bm25_p=params["bm25"])

    corpus_ids = [c["chunk_id"] for c in read_jsonl(paths.chunks)]
    evaluated = built[-1].evaluator.corpus_ids
    pooled = read_json(paths.metrics("train_embedder"))["dev"]["pool"]
    if k == 0:
        assert evaluated == corpus_ids
        assert pooled == {"k": 0, "chunks": 8, "corpus_chunks": 8, "fraction": 1.0, "seconds": 0.0}
    else:
        assert {"D0#0", "D3#0"} <= set(evaluated) and len(evaluated) <= 6  # the dev questions' labeled chunks
        assert pooled["k"] == 1 and pooled["chunks"] == len(evaluated) and pooled["corpus_chunks"] == 8
        assert pooled["fraction"] == round(len(evaluated) / 8, 4)
    assert read_json(paths.metrics("train_embedder"))["dev"]["evidence"]["n_queries"] == 2


def test_a_negative_pool_depth_is_refused():
    from conftest import shipped_params

    from ragtune.train.embedder.config import EmbedderTrainConfig, TrainConfigError

    assert EmbedderTrainConfig.from_params(shipped_params("train_embedder")).dev_pool_k > 0
    with pytest.raises(TrainConfigError, match="dev_pool_k"):
        EmbedderTrainConfig.from_params(shipped_params("train_embedder", dev_pool_k=-1))
