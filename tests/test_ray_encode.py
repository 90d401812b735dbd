"""model.encode_on: ray on a real local Ray cluster (loopback, 2 CPUs, shut down at the end): the same vectors as
encoding in this process, block for block, and the same resumable shards."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_actors_encode_the_same_vectors_as_this_process(local_cluster, tiny_embedder_path, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from ragtune.ray_encode import RaySettings
    from ragtune.retrieval import DenseEncoder, RayEncoding

    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path / "cache"))
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    texts = [f"điều {i}: người lao động nghỉ phép " + "năm " * (i % 13) for i in range(150)]
    local = DenseEncoder(model, "tiny", batch_size=4, use_cache=False).encode(texts, "passage: ")
    settings = RaySettings(address="auto", actors=2, gpus_per_actor=0)
    remote = DenseEncoder(model, "tiny", batch_size=4, ray=RayEncoding(str(tiny_embedder_path), settings))
    remote.shard_size = 4 * 8 * 2  # several shards, each several blocks: the resume unit stays the shard
    got = remote.encode(texts, "passage: ")
    assert got.dtype == np.float32 and got.shape == local.shape
    assert got.tobytes() == local.tobytes()  # the same bytes: the outputs do not depend on the engine
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.keys.npy"))) == -(-150 // 64)


def test_ray_settings_come_from_the_model_params():
    from ragtune.ray_encode import RaySettings

    p = {"ray_address": "ray://head:10001", "ray_actors": 4, "ray_gpus_per_actor": 1}
    assert RaySettings.from_params(p) == RaySettings("ray://head:10001", 4, 1.0)
