"""The error type of the analysis's unusable inputs. (A missing `analysis`
extra raises the package's `errors.MissingExtra`, as a missing `ray` one does.)"""


class AnalysisInputError(ValueError):
    """An input file, directory or setting of an analysis cannot be used.

    The message names the setting or input and the value, e.g.
    ``--wic-train /data/wic: no *.data.txt file in this directory``, so the
    CLI can print it as it is.
    """
