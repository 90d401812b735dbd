"""`ragtune search`: the installed CLI answers from models/ alone (index + embedder + reranker + pipeline.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_serving_models

from ragtune.io import write_json
from ragtune.search import Pipeline, Searcher, SearchSetupError

DOCS = {
    "HR-1": ("Nghỉ phép năm", "Nhân viên chính thức được nghỉ phép năm mười hai ngày có hưởng lương."),
    "IT-1": ("Mật khẩu", "Mật khẩu phải có ít nhất mười hai ký tự và được đổi mỗi chín mươi ngày."),
    "IT-2": ("VPN", "Kết nối VPN bắt buộc khi làm việc từ xa với hệ thống nội bộ của công ty."),
    "FN-1": ("Công tác phí", "Công tác phí được thanh toán trong vòng mười ngày sau khi nộp hóa đơn."),
}


@pytest.fixture
def repo(tmp_path: Path, tiny_embedder_path: Path) -> Path:
    """A repo-shaped folder with models/embedder, models/reranker, models/index and models/pipeline.json."""
    return write_serving_models(tmp_path, tiny_embedder_path, DOCS, candidate_k=4)


def test_pipeline_file_and_names():
    p = Pipeline.parse("ft_dense+rerank", Pipeline(rerank_k=7, fusion_weight=0.3))
    assert (p.retriever, p.rerank, p.rerank_k, p.fusion_weight, p.name) == ("ft_dense", True, 7, 0.3, "ft_dense+rerank")
    # a pipeline named at query time fuses at dev's weight for its own retriever, not the served one's
    served = Pipeline("ft_hybrid", rerank_k=7, fusion_weight=0.0, fusion_weights={"ft_hybrid": 0.0, "ft_dense": 0.7})
    p = Pipeline.parse("ft_dense+rerank", served)
    assert (p.fusion_weight, p.rerank_k, p.fusion_weights) == (0.7, 7, served.fusion_weights)
    assert Pipeline.parse("ft_hybrid+rerank", served).fusion_weight == 0.0
    assert Pipeline.parse("bm25+rerank", served).fusion_weight == 0.0  # no weight for it: the file's own
    with pytest.raises(SearchSetupError, match="unknown pipeline"):
        Pipeline.parse("base_dense")
    # every retriever evaluate can choose is servable, with or without the reranker; alpha comes from the file
    convex = Pipeline.parse("ft_convex+rerank", Pipeline(alpha=0.3))
    assert (convex.retriever, convex.rerank, convex.alpha) == ("ft_convex", True, 0.3)
    assert Pipeline.parse("bm25+rerank").name == "bm25+rerank"
    assert Pipeline.load("/nonexistent/pipeline.json") == Pipeline()


def test_searcher_follows_the_pipeline_file(repo: Path):
    pipeline = Pipeline.load(repo / "models/pipeline.json")
    s = Searcher.load(repo / "models/index", pipeline, reranker_dir=repo / "models/reranker")
    hits = s.search("Làm việc từ xa có cần VPN không?", k=4)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert {h["doc_id"] for h in hits} == set(DOCS)
    assert hits[0]["metadata"]["department"] == hits[0]["doc_id"].split("-")[0]
    # the reranker scored exactly the top rerank_k candidates; the rest keep retrieval order after them
    assert sum("reranker" in h["scores"] for h in hits) == 3 and "reranker" not in hits[3]["scores"]
    assert all(hits[i]["scores"]["final"] >= hits[i + 1]["scores"]["final"] for i in range(2))
    assert hits[3]["scores"]["final"] is None  # below the reranked head: retrieval order, no fused score
    bm25_only = Searcher.load(repo / "models/index", Pipeline.parse("bm25"))
    assert bm25_only.search("VPN làm việc từ xa", k=1)[0]["doc_id"] == "IT-2"  # lexical match is exact here


def test_convex_hybrid_serves_each_side_at_its_ends(repo: Path):
    """ft_convex at alpha 1 orders like the embedder alone and at alpha 0 like BM25 alone; in between it is served
    with the alpha that evaluate wrote to pipeline.json."""
    index = repo / "models/index"
    query = "VPN làm việc từ xa"

    def order(pipeline: Pipeline) -> list[str]:
        return [h["chunk_id"] for h in Searcher.load(index, pipeline).search(query, k=4)]

    assert order(Pipeline("ft_convex", alpha=1.0, candidate_k=4)) == order(Pipeline("ft_dense", candidate_k=4))
    assert order(Pipeline("ft_convex", alpha=0.0, candidate_k=4))[0] == order(Pipeline("bm25", candidate_k=4))[0]
    write_json(repo / "models/pipeline.json", {"system": "ft_convex", "retriever": "ft_convex", "alpha": 0.4})
    loaded = Pipeline.load(repo / "models/pipeline.json")
    assert (loaded.name, loaded.alpha) == ("ft_convex", 0.4)
    hits = Searcher.load(index, loaded).search(query, k=2)
    assert len(hits) == 2 and hits[0]["scores"]["retriever"] >= hits[1]["scores"]["retriever"]


def test_cli_json_and_table(repo: Path, capsys):
    from ragtune.cli import main

    assert main(["search", "mật khẩu bao nhiêu ký tự", "--k", "2", "--json", "--root", str(repo)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pipeline"] == "ft_hybrid+rerank" and out["fusion_weight"] == 0.5
    assert len(out["results"]) == 2 and {"title", "metadata", "scores", "text"} <= set(out["results"][0])
    assert main(["search", "mật khẩu", "--pipeline", "ft_dense", "--root", str(repo)]) == 0
    table = capsys.readouterr().out
    assert "pipeline ft_dense" in table and "ms" in table


def test_cli_says_what_to_run_when_the_index_is_missing(tmp_path: Path, capsys):
    from ragtune.cli import main

    assert main(["search", "câu hỏi", "--root", str(tmp_path)]) == 2
    assert "dvc repro" in capsys.readouterr().err


def test_installed_console_script(repo: Path):
    """`ragtune` is on PATH after `pip install -e .` (the README's test command installs it)."""
    exe = shutil.which("ragtune", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("the ragtune console script is not installed: run `pip install -e .`")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [exe, "search", "công tác phí thanh toán", "--json", "--k", "1", "--root", str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["results"][0]["rank"] == 1


def test_an_index_built_before_access_levels_is_refused(repo: Path, capsys):
    """Served as one level it would show every document to every caller: rebuild it instead."""
    from ragtune.cli import main

    manifest = json.loads((repo / "models/index/manifest.json").read_text(encoding="utf-8"))
    del manifest["access"]
    write_json(repo / "models/index/manifest.json", manifest)
    with pytest.raises(SearchSetupError, match=r"built before access levels: run `dvc repro index`"):
        Searcher.load(repo / "models/index")
    assert main(["search", "mật khẩu", "--root", str(repo)]) == 2
    assert "dvc repro index" in capsys.readouterr().err


def test_an_index_another_embedder_built_is_refused_with_the_fix(repo: Path, capsys):
    """train_embedder ran again but the index did not: queries from the new model would meet passages from the old
    one's vector space, with no error, only poor results. Search (and serve, which loads through Searcher) refuse it."""
    from ragtune.cli import main

    Searcher.load(repo / "models/index")  # as built: the fingerprints agree
    config = repo / "models/embedder/config.json"
    config.write_text(config.read_text(encoding="utf-8").replace("{", '{"retrained": 1, ', 1), encoding="utf-8")
    with pytest.raises(SearchSetupError, match=r"embedded by another model .* Run `dvc repro index`.*ragtune reindex"):
        Searcher.load(repo / "models/index")
    assert main(["search", "mật khẩu", "--root", str(repo)]) == 2
    assert "dvc repro index" in capsys.readouterr().err
    manifest = json.loads((repo / "models/index/manifest.json").read_text(encoding="utf-8"))
    del manifest["embedder_fingerprint"]
    write_json(repo / "models/index/manifest.json", manifest)
    with pytest.raises(SearchSetupError, match=r"does not record which embedder built it.*dvc repro index"):
        Searcher.load(repo / "models/index")
