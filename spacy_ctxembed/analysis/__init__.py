"""What the contextual vectors capture, layer by layer.

:mod:`.metrics` holds Ethayarajh (2019)'s geometry measures as pure
functions over arrays (no spaCy pipeline needed).
"""
from .metrics import (
    adjusted,
    anisotropy,
    intra_sentence_similarity,
    layer_report,
    max_explainable_variance,
    mev_baseline,
    self_similarity,
)

__all__ = [
    "adjusted",
    "anisotropy",
    "intra_sentence_similarity",
    "layer_report",
    "max_explainable_variance",
    "mev_baseline",
    "self_similarity",
]
