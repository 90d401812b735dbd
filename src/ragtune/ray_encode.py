"""Dense encoding on a Ray cluster (``model.encode_on: ray``): Ray Data ``map_batches`` over an actor pool, one
model per actor.

Why Ray and not a home-made pool: past one machine, a cluster needs scheduling, placement on GPUs, retries of a lost
worker and back-pressure, which Ray Data does. Within ragtune the unit of work stays the local encoder's block
(``batch_size`` × 8 texts, see :class:`ragtune.retrieval.DenseEncoder`): each Ray row is one whole block, encoded by
an actor exactly as the local path encodes it (the same texts in one ``encode`` call, the same length-sorted
batches), so the vectors are the same numbers and the stage's outputs the same bytes whichever engine ran it. The
caller still writes its resumable shards as results come back.

The model folder must be readable from every Ray worker at the same path (a shared file system, or the model baked
into the workers' image); ``model.ray_address`` names the cluster (``auto``: the one ``ray start`` made here).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: the cluster address, the number of actors (each holds one model) and the GPUs each
    actor reserves (the ``model.ray_*`` params)."""

    address: str
    actors: int
    gpus_per_actor: float

    @classmethod
    def from_params(cls, model_params: dict[str, Any]) -> RaySettings:
        return cls(
            address=str(model_params["ray_address"]),
            actors=int(model_params["ray_actors"]),
            gpus_per_actor=float(model_params["ray_gpus_per_actor"]),
        )


class _EncodeActor:
    """One model, loaded once per actor; each call encodes whole blocks, one ``encode`` call per block."""

    def __init__(self, model_path: str, max_seq_length: int | None, prompt: str, batch_size: int):
        from ragtune.models import load_embedder

        self.model = load_embedder(model_path, max_seq_length=max_seq_length)
        self.prompt = prompt
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = [
            self.model.encode(
                list(block),
                prompt=self.prompt,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            .astype(np.float32)
            .tobytes()
            for block in batch["block"]
        ]
        return {"i": batch["i"], "vectors": np.array(vectors, dtype=object)}


def connect(settings: RaySettings) -> None:
    """Join the cluster once per process (a test or a caller may have started one already)."""
    try:
        import ray
    except ImportError as exc:
        from ragtune.errors import UserError

        raise UserError(
            "model.encode_on is ray, but Ray is not installed: `pip install 'ray[data]'` (or set model.encode_on: "
            "local)"
        ) from exc
    if not ray.is_initialized():
        ray.init(address=settings.address, log_to_driver=False)


def iter_encoded(
    blocks: list[list[str]],
    *,
    model_path: str,
    max_seq_length: int | None,
    prompt: str,
    batch_size: int,
    dim: int,
    settings: RaySettings,
) -> Iterator[np.ndarray]:
    """Each block's vectors (float32, L2-normalised), in the order of ``blocks``, as Ray actors finish them: one
    actor pool for the whole call (an actor's start, importing torch and loading the model, is paid once), and the
    caller can write each shard as soon as its blocks are back."""
    import ray.data

    connect(settings)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    encoded = ray.data.from_items([{"i": i, "block": block} for i, block in enumerate(blocks)]).map_batches(
        _EncodeActor,
        batch_size=1,  # one block per call: the block, not Ray, decides what is encoded together
        batch_format="numpy",
        fn_constructor_kwargs={
            "model_path": model_path,
            "max_seq_length": max_seq_length,
            "prompt": prompt,
            "batch_size": batch_size,
        },
        concurrency=max(1, min(settings.actors, len(blocks))),
        num_gpus=settings.gpus_per_actor,
    )
    expected = 0
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        for i, vectors in zip(batch["i"], batch["vectors"], strict=True):
            if int(i) != expected:
                raise RuntimeError(f"Ray returned block {int(i)} where block {expected} was due")
            expected += 1
            yield np.frombuffer(vectors, dtype=np.float32).reshape(-1, dim)
    if expected != len(blocks):
        raise RuntimeError(f"Ray returned {expected} of {len(blocks)} blocks")
