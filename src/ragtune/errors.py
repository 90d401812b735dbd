"""The one base class for a problem in the user's data, params or setup, as opposed to a bug in ragtune.

A :class:`UserError`'s message says what is wrong, where (``params.yaml pairs.dev_ratio``, ``file:line``) and how to
fix it. A stage prints it as one red line and exits 1 (:func:`ragtune.console.stage`): a traceback would bury the
message under frames of ragtune's code that the user cannot act on. Anything else that escapes a stage is a bug,
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad params or a missing prerequisite; the message names the fix."""
