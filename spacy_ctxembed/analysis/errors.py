"""The error types of the analysis: unusable inputs, and a missing `analysis` extra."""


class AnalysisInputError(ValueError):
    """An input file, directory or setting of an analysis cannot be used.

    The message names the setting or input and the value, e.g.
    ``--wic-train /data/wic: no *.data.txt file in this directory``, so the
    CLI can print it as it is.
    """


class MissingExtraError(ImportError):
    """A package of the ``analysis`` extra is missing or too old; the message says how to install it."""
