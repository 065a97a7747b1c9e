"""The package's exception types.

Every error a user can cause (bad data, a wrong checkpoint, an impossible
hyperparameter, an unwritable folder) is raised as a subclass of `VqlibError`
with a one-sentence message that says what is wrong and what to do. The CLI
prints that sentence without a traceback (``--debug`` shows it).
"""


class VqlibError(Exception):
    """Base class: a problem the user can fix, described in one sentence."""


class DataError(VqlibError):
    """FashionMNIST files are missing, truncated, foreign or corrupt."""


class ConfigError(VqlibError, ValueError):
    """A hyperparameter or option has an impossible value."""


class CheckpointError(VqlibError):
    """A checkpoint is missing, not a checkpoint, or of another kind or configuration."""


class OutputError(VqlibError):
    """An output folder or file cannot be written."""


class TrainingError(VqlibError):
    """Training could not go on (for example, the loss became NaN or infinite)."""


class InputError(VqlibError, ValueError):
    """Images or codes passed to the Python API (vqlib.api) have the wrong shape, type or range."""


class ResultFileError(VqlibError, ValueError):
    """One of the project's own files (a JSON record, a CSV table) is missing, unreadable or corrupt.

    A ValueError too, so that callers that treat a broken record as "not done
    yet" (``except (OSError, ValueError)``) keep doing so.
    """
