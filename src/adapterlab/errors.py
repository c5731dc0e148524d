"""Errors a user can act on.

Every error raised for bad input is an :class:`AdapterlabError`: the CLI prints its message on one line and
exits non-zero; the traceback is shown only with ``--debug``. Messages name the file, row, column or key and
say what to do.
"""


class AdapterlabError(Exception):
    """A problem the user can fix (bad recipe, bad data, missing file)."""

    exit_code = 2


class RecipeError(AdapterlabError):
    """The recipe YAML or an override is invalid."""


class DataError(AdapterlabError):
    """An input file, column or row is unusable."""


class ModelError(AdapterlabError):
    """A base model or adapter cannot be found or loaded."""


class TrainingError(AdapterlabError):
    """Training cannot start or had to stop (diverged, no checkpoint to resume from)."""

    exit_code = 3
