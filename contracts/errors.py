"""The one exception type for bad user input to prediction and ensembling."""

from __future__ import annotations


class UserInputError(ValueError):
    """A user's file, folder or flag cannot be used; the message names it and says what to do.

    The entry points turn it into a one-line message and exit status 1, without a traceback.
    """
