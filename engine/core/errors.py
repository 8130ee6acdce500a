"""The error base of Lookalike: every error a user can cause or fix is a :class:`LookalikeError`.

Front ends print a ``LookalikeError`` as one line (its message names the cause and the fix) and anything
else with its traceback, since that is a bug. Each area has its own subclass; most also derive from the
builtin a caller would expect (``ValueError`` for bad values, ``LookupError`` for unknown names,
``OSError`` for files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class LookalikeError(Exception):
    """An error with a one-line message that says what is wrong and how to fix it."""


class InvalidRequestError(LookalikeError, ValueError):
    """A value, a name or a combination of options that cannot be used."""


class UnknownNameError(LookalikeError, ValueError):
    """A name that no registry holds; the message lists the valid ones."""


class NotFoundError(LookalikeError, LookupError):
    """Something asked for by id or name is not in the database."""


class UnknownIdError(NotFoundError, KeyError):
    """An id (image, review item) that is not stored."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotAFolderError(LookalikeError, NotADirectoryError):
    """A path that should be a folder is not one."""


class MissingFileError(LookalikeError, FileNotFoundError):
    """A file the database refers to (weights, parameters, an image) is not where it was recorded."""


class StorageError(LookalikeError, OSError):
    """The database cannot be read or written as asked (locks, permissions, object stores)."""


class StorageConfigError(LookalikeError, ValueError):
    """An object-store location or its credentials are configured wrongly."""


class DataError(LookalikeError, ValueError):
    """Stored or given data cannot be used: a damaged file, an image that cannot be decoded, too few rows."""


class EncoderError(LookalikeError, ValueError):
    """An encoder cannot be built or used as asked."""


class EncoderMismatchError(LookalikeError, ValueError):
    """Vectors of one encoder were about to meet a table made by another."""


class VersionError(LookalikeError, ValueError):
    """A model version cannot be published, rebuilt or refreshed as asked."""


class CannotEmbedError(VersionError):
    """A model version has no encoder to embed new catalogue images with (vectors made outside Lookalike)."""


class SearchError(LookalikeError, ValueError):
    """A search cannot be run as asked."""


class FilterError(LookalikeError, ValueError):
    """A ``where`` filter that Lookalike refuses before LanceDB sees it."""


class EvaluationError(LookalikeError, ValueError):
    """An evaluation, calibration or review step cannot run as asked."""


class TrainingError(LookalikeError, ValueError):
    """A training run cannot start or go on as asked."""


class MaskingError(LookalikeError, ValueError):
    """A mask set, a masker or a masking mode cannot be used as asked."""


class ReportError(LookalikeError, ValueError):
    """A report or a figure cannot be made as asked."""


class IngestError(LookalikeError, ValueError):
    """An ingest cannot run as asked."""
