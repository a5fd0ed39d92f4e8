"""The embedder models: each maps docs to per-doc stacks of token layers."""
from .bert import BertEmbedder
from .elmo import ElmoEmbedder

__all__ = ["BertEmbedder", "ElmoEmbedder"]
from .listener import ContextualListener
from .trf_pooler import TrfPooler

__all__ += ["ContextualListener", "TrfPooler"]
