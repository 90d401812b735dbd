"""The bi-encoder trainer: config, trainer (dataset, loss, arguments), dev checks, merge, and the stage run."""
