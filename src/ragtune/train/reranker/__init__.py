"""The cross-encoder trainer: config, data (groups mined from the embedder), trainer, and the stage run."""
