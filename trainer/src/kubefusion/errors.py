"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero.

Raise a subclass of :class:`UserError` for anything caused by input (a job file, a dataset, an artifact
folder, a missing local model); let genuine bugs propagate as ordinary exceptions.
"""


class UserError(Exception):
    """Base class: the message names what is wrong and where (file, line, id, field)."""

    exit_code = 2


class DataError(UserError):
    """The dataset cannot be read, joined or split under the chosen policy."""


class ArtifactError(UserError):
    """A preprocessing or model artifact is missing, corrupt, or does not match this job."""


class ModelSourceError(UserError):
    """A backbone or tokenizer cannot be loaded from a local path or cache (we never download)."""
