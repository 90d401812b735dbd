"""The one error both halves of :mod:`ragtune.models` raise, in a module of its own so that the offline builder
(:mod:`ragtune.models.e5_offline`) and the resolver that runs it (:mod:`ragtune.models.resolve`) share it without
importing each other in a circle."""

from ragtune.errors import UserError


class ModelResolutionError(UserError, RuntimeError):
    """No source could produce the model; the message lists every attempt and how to fix it."""
