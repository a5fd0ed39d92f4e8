"""The embedder models: each maps docs to per-doc stacks of token layers."""
from .bert import BertEmbedder

__all__ = ["BertEmbedder"]
from .trf_pooler import TrfPooler

__all__ += ["TrfPooler"]
